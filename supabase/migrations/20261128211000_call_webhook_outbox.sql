-- A finished call's webhook is delivered at least once. The sender that claims it (see
-- 20261128210000_call_webhook_once) marks it sent once the receiver took it
-- (webhook_sent_at). A claim that is not marked sent within its lease (its sender died,
-- the receiver was down through every retry), and a finished call nobody claimed (the
-- database was away when its own instance tried), is taken again by any instance's
-- housekeeping (claim_due_webhooks), for a day after the call was created. Every
-- delivery of a call's event carries the same event id: receivers dedupe on it.
alter table public.workflow_threads add column webhook_sent_at timestamptz;

-- Calls that finished before this migration are not sent again.
update public.workflow_threads
   set webhook_sent_at = coalesce(webhook_claimed_at, updated_at)
 where webhook_url is not null and status in ('completed', 'failed');

create index workflow_threads_webhook_due_idx on public.workflow_threads (created_at)
  where webhook_url is not null and webhook_sent_at is null
    and status in ('completed', 'failed');

-- Claim up to p_limit due webhooks (a claim older than p_lease_seconds, or a call
-- finished p_settle_seconds ago that nobody claimed, created within p_max_age_seconds);
-- returns their calls. Two instances never claim the same call at once.
create or replace function public.claim_due_webhooks(
  p_lease_seconds integer, p_settle_seconds integer, p_max_age_seconds integer,
  p_limit integer)
returns setof uuid
language sql
volatile
set search_path = public
as $$
  update workflow_threads t
     set webhook_claimed_at = now()
   where t.workflow_thread_id in (
     select d.workflow_thread_id
       from workflow_threads d
      where d.webhook_url is not null
        and d.webhook_sent_at is null
        and d.status in ('completed', 'failed')
        and d.created_at > now() - make_interval(secs => p_max_age_seconds)
        and case
              when d.webhook_claimed_at is null
                then d.updated_at < now() - make_interval(secs => p_settle_seconds)
              else d.webhook_claimed_at < now() - make_interval(secs => p_lease_seconds)
            end
      order by d.created_at
      limit p_limit
      for update skip locked)
  returning t.workflow_thread_id;
$$;

revoke execute on function public.claim_due_webhooks(integer, integer, integer, integer)
  from public, anon, authenticated;
grant execute on function public.claim_due_webhooks(integer, integer, integer, integer)
  to service_role;
