-- Every Flow instance has an identity and a heartbeat here, and every call records the
-- instance running it, so a call whose instance is gone (kill -9, a lost host, a
-- database blip at the call's end) is failed within seconds by any live instance
-- instead of staying 'running' for half an hour, and a stop request for it ends it at
-- once.

create table public.flow_instances (
  id text primary key check (length(id) between 1 and 200),
  hostname text,
  pid integer,
  started_at timestamptz not null default now(),
  heartbeat_at timestamptz not null default now()
);
alter table public.flow_instances enable row level security;
grant select, insert, update, delete on public.flow_instances to service_role;

alter table public.workflow_threads add column instance_id text;
create index workflow_threads_instance_idx on public.workflow_threads (instance_id)
  where status in ('pending', 'starting', 'running', 'processing');

-- The instance is alive: insert or refresh its row.
create or replace function public.flow_instance_heartbeat(p_id text, p_hostname text, p_pid integer)
returns void
language sql
set search_path = public
as $$
  insert into flow_instances (id, hostname, pid) values (p_id, p_hostname, p_pid)
  on conflict (id) do update set heartbeat_at = now();
$$;

-- The instance stops on purpose (its calls were ended first).
create or replace function public.flow_instance_gone(p_id text)
returns void
language sql
set search_path = public
as $$
  delete from flow_instances where id = p_id;
$$;

-- Fail the unfinished calls nobody runs any more, atomically; returns their ids:
--   * calls of an instance without a heartbeat in the last p_stale_seconds;
--   * calls of p_instance itself that it no longer runs (p_running lists the ones it
--     does), untouched for 30 s (a call it just took is never caught in between).
-- Old instance rows are removed once nothing refers to them.
create or replace function public.fail_lost_calls(
  p_instance text, p_running uuid[], p_stale_seconds integer)
returns setof uuid
language plpgsql
set search_path = public
as $$
begin
  return query
  update workflow_threads t
  set status = 'failed', error_stage = 'call', error_code = 'instance_lost',
      error_message = 'the instance running this call stopped before it ended'
  where t.status in ('pending', 'starting', 'running', 'processing')
    and t.instance_id is not null
    and (
      (t.instance_id <> p_instance and not exists (
         select 1 from flow_instances i
         where i.id = t.instance_id
           and i.heartbeat_at > now() - make_interval(secs => p_stale_seconds)))
      or (t.instance_id = p_instance
          and t.workflow_thread_id <> all(coalesce(p_running, '{}'))
          and t.updated_at < now() - interval '30 seconds'))
  returning t.workflow_thread_id;

  delete from flow_instances i
  where i.heartbeat_at < now() - make_interval(secs => greatest(p_stale_seconds, 60) * 10)
    and not exists (
      select 1 from workflow_threads t
      where t.instance_id = i.id
        and t.status in ('pending', 'starting', 'running', 'processing'));
end
$$;

-- Ask the instance running a call to stop it. Answers 'requested' (a live instance runs
-- it and will end it within a second or two), 'ended' (no live instance runs it: it is
-- failed at once) or 'not_running' (it is neither starting nor running).
create or replace function public.request_call_stop(p_thread uuid, p_stale_seconds integer)
returns text
language plpgsql
set search_path = public
as $$
declare
  owner text;
  status_now text;
begin
  select instance_id, status into owner, status_now
  from workflow_threads where workflow_thread_id = p_thread
  for no key update;
  if not found or status_now not in ('starting', 'running') then
    return 'not_running';
  end if;
  if owner is not null and exists (
      select 1 from flow_instances i
      where i.id = owner and i.heartbeat_at > now() - make_interval(secs => p_stale_seconds)) then
    update workflow_threads set stop_requested_at = now() where workflow_thread_id = p_thread;
    return 'requested';
  end if;
  update workflow_threads
  set status = 'failed', error_stage = 'call', error_code = 'instance_lost',
      error_message = 'stopped: no live instance was running this call'
  where workflow_thread_id = p_thread;
  return 'ended';
end
$$;

revoke execute on function public.flow_instance_heartbeat(text, text, integer) from public, anon, authenticated;
revoke execute on function public.flow_instance_gone(text) from public, anon, authenticated;
revoke execute on function public.fail_lost_calls(text, uuid[], integer) from public, anon, authenticated;
revoke execute on function public.request_call_stop(uuid, integer) from public, anon, authenticated;
grant execute on function public.flow_instance_heartbeat(text, text, integer) to service_role;
grant execute on function public.flow_instance_gone(text) to service_role;
grant execute on function public.fail_lost_calls(text, uuid[], integer) to service_role;
grant execute on function public.request_call_stop(uuid, integer) to service_role;
