-- "Sync now" is never lost: a request made while a cycle runs makes exactly one more
-- cycle right after it.
--
-- A request increments `sync_requests` (a counter, never reset) and makes the
-- integration due. A claim records the counter's value at that moment
-- (`lease_sync_requests`) in the same row update, so the two are ordered by the row
-- lock alone, not by clocks or by when transactions started: a request whose update
-- lands before the claim is seen by the claim and served by that cycle; one that lands
-- after it leaves the counter above the recorded value. Release compares them in one
-- UPDATE: above means a request arrived during the cycle, so the integration stays due
-- (next_sync_at = now()); equal means every request was served, so the next cycle comes
-- after the interval (or the retry delay). The request is never read and rewritten from
-- outside the database, so concurrent requests, claims and releases cannot lose one.
-- Several requests during one cycle make one more cycle, not several.

alter table public.analytics_integrations
  add column sync_requests bigint not null default 0,
  add column lease_sync_requests bigint;

comment on column public.analytics_integrations.sync_requests is
  'How many times a sync was requested ("sync now"); only ever incremented.';
comment on column public.analytics_integrations.lease_sync_requests is
  'sync_requests when the current lease was claimed; null when not leased. A release '
  'that finds sync_requests above it keeps the integration due.';

-- Cycles in flight while this migration runs were claimed before requests were counted:
-- any request from now on arrives after their claim.
update public.analytics_integrations
set lease_sync_requests = 0
where lease_owner is not null;

-- "Sync now": due at once, and counted, so a cycle in flight runs once more after it.
-- p_api_key_id scopes the request to that key's integrations (null: any). Returns
-- whether the integration was found.
create or replace function public.analytics_request_sync(
  p_id uuid,
  p_api_key_id uuid default null
)
returns boolean
language sql
volatile
set search_path = public
as $$
  with requested as (
    update analytics_integrations a
    set sync_requests = a.sync_requests + 1,
        next_sync_at = least(a.next_sync_at, now())
    where a.id = p_id and (p_api_key_id is null or a.api_key_id = p_api_key_id)
    returning 1
  )
  select exists (select 1 from requested);
$$;

-- As before (see 20261127132000_analytics_export.sql), plus: the claim records the
-- request counter, and p_exclude leaves out integrations (those a pass has already run,
-- so one pass runs each integration at most once). A new argument is a new signature,
-- so the old function is dropped rather than left as an ambiguous overload.
drop function public.analytics_claim_integrations(text, integer, integer, boolean, uuid[]);

create function public.analytics_claim_integrations(
  p_owner text,
  p_lease_seconds integer,
  p_limit integer default 10,
  p_force boolean default false,
  p_ids uuid[] default null,
  p_exclude uuid[] default null
)
returns setof public.analytics_integrations
language sql
volatile
set search_path = public
as $$
  -- The candidates are picked once (a MATERIALIZED CTE): a LIMIT ... SKIP LOCKED subquery
  -- inside IN may be re-run by the planner and hand out more rows than asked for.
  with picked as materialized (
    select c.id from analytics_integrations c
    where (c.status = 'active' or (c.status = 'syncing' and c.lease_expires_at < now()))
      and (c.lease_expires_at is null or c.lease_expires_at < now())
      and (p_force or c.next_sync_at <= now())
      and (p_ids is null or c.id = any (p_ids))
      and (p_exclude is null or c.id <> all (p_exclude))
    order by c.next_sync_at
    limit greatest(p_limit, 0)
    for update skip locked
  )
  update analytics_integrations a
  set status = 'syncing',
      lease_owner = p_owner,
      lease_expires_at = now() + make_interval(secs => p_lease_seconds),
      lease_sync_requests = a.sync_requests
  from picked
  where a.id = picked.id
    and (a.status = 'active' or (a.status = 'syncing' and a.lease_expires_at < now()))
    and (a.lease_expires_at is null or a.lease_expires_at < now())
  returning a.*;
$$;

-- Ends a cycle: frees the lease and records the outcome. A status set meanwhile by a
-- person (paused, resumed, credentials edited) wins over the cycle's own. A sync
-- requested after the claim keeps the integration due now (even over a retry delay:
-- the request asked for a cycle); otherwise the next one is after p_retry_in_seconds,
-- else the sync interval.
create or replace function public.analytics_export_release(
  p_id uuid,
  p_owner text,
  p_status text,
  p_error text,
  p_synced boolean,
  p_retry_in_seconds integer default null
)
returns text
language sql
volatile
set search_path = public
as $$
  update analytics_integrations a
  set status = case when a.status = 'syncing' then p_status else a.status end,
      last_error = case when a.status = 'syncing' then p_error else a.last_error end,
      last_synced_at = case when p_synced then now() else a.last_synced_at end,
      next_sync_at = case
        when a.sync_requests > coalesce(a.lease_sync_requests, a.sync_requests) then now()
        else now() + make_interval(
          secs => coalesce(p_retry_in_seconds, a.sync_interval_seconds))
      end,
      lease_sync_requests = null,
      lease_owner = null,
      lease_expires_at = null
  where a.id = p_id and a.lease_owner = p_owner
  returning a.status;
$$;

do $$
declare
  fn text;
begin
  foreach fn in array array[
    'analytics_request_sync(uuid, uuid)',
    'analytics_claim_integrations(text, integer, integer, boolean, uuid[], uuid[])',
    'analytics_export_release(uuid, text, text, text, boolean, integer)'
  ] loop
    execute format('revoke execute on function public.%s from public, anon, authenticated', fn);
    execute format('grant execute on function public.%s to service_role', fn);
  end loop;
end
$$;
