-- Budgets: a spending limit per API key, enforced at the join and while calls run.
--
-- A budget caps what a key spends per period (a UTC calendar day or month, or in
-- total). What it has spent is the ledger's priced cost in the period outside its live
-- calls; each live call (pending, starting or running) holds a reservation: its cost so
-- far, as the instance running it reports it (workflow_threads.budget_reserved_usd) or
-- as the ledger already holds it, whichever is larger. remaining = limit - spent -
-- reserved, the same figure on every instance. Spending is summed per key and UTC day
-- (usage_spend_daily, kept with the ledger like the hourly rollups), so a check reads a
-- few rows per day of the period however many calls the key makes.
--
-- admit_call checks a join and creates its thread in one statement, under a lock on
-- the key's budget row, so two instances taking joins for one key at once never both
-- pass a check only one should pass. Alerts are claimed by an insert that only one
-- caller can win: each fraction once per period, exhaustion once.

create table public.api_key_budgets (
  api_key_id uuid primary key references public.api_keys (id) on delete cascade,
  limit_usd numeric(20, 10) not null check (limit_usd > 0),
  period text not null check (period in ('day', 'month', 'total')),
  alert_at numeric[] not null default '{}'
    check (0 < all (alert_at) and 1 > all (alert_at) and cardinality(alert_at) <= 10),
  max_call_usd numeric(20, 10) check (max_call_usd is null or max_call_usd > 0),
  max_concurrent_calls integer check (max_concurrent_calls is null or max_concurrent_calls > 0),
  webhook_url text check (webhook_url is null or length(webhook_url) <= 2048),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create trigger api_key_budgets_touch before update on public.api_key_budgets
  for each row execute function public.touch_updated_at();

-- One row per alert sent: the primary key is what makes each one happen once per
-- period ('-infinity' is the period of a total budget).
create table public.budget_alerts (
  api_key_id uuid not null references public.api_keys (id) on delete cascade,
  period_start timestamptz not null,
  kind text not null check (kind in ('threshold', 'exhausted')),
  fraction numeric not null,
  period text not null,
  spent_usd numeric not null,
  reserved_usd numeric not null,
  limit_usd numeric not null,
  created_at timestamptz not null default now(),
  primary key (api_key_id, period_start, kind, fraction)
);

alter table public.api_key_budgets enable row level security;
alter table public.budget_alerts enable row level security;
create policy service_role_all on public.api_key_budgets
  for all to service_role using (true) with check (true);
create policy service_role_all on public.budget_alerts
  for all to service_role using (true) with check (true);
grant select, insert, update, delete on public.api_key_budgets to service_role;
grant select, insert, update, delete on public.budget_alerts to service_role;

-- How every call ended (completed, stopped, max_duration, idle, budget_exhausted,
-- shutdown, error, ...), and a live call's reservation.
alter table public.workflow_threads
  add column end_reason text check (end_reason is null or length(end_reason) <= 50),
  add column budget_reserved_usd numeric(20, 10) not null default 0
    check (budget_reserved_usd >= 0);
create index workflow_threads_key_live_idx on public.workflow_threads (api_key_id)
  where status in ('pending', 'ringing', 'starting', 'running');

-- What each key spent per UTC day, kept by a statement trigger on the ledger in the same
-- transaction as every insert (like the hourly rollups), so a budget's period is summed
-- over a few rows per day however many calls the key makes.
--
-- A transaction never waits for another to add to a key's day: each takes a shard of
-- the day no other open transaction holds (a transaction-scoped advisory lock per key,
-- day and shard, tried in order), so its row of the day is its own until it commits. A
-- long open transaction delays nobody. Only when all 16 shards are held at once does a
-- writer wait, for one of them.
create table public.usage_spend_daily (
  api_key_id uuid not null references public.api_keys (id) on delete restrict,
  day date not null,
  shard smallint not null check (shard between 0 and 15),
  cost_usd numeric not null,
  unpriced_events bigint not null,
  primary key (api_key_id, day, shard)
);
alter table public.usage_spend_daily enable row level security;
create policy service_role_all on public.usage_spend_daily
  for all to service_role using (true) with check (true);
grant select, insert, update, delete on public.usage_spend_daily to service_role;

create or replace function public.usage_spend_apply() returns trigger
language plpgsql
set search_path = public
as $$
declare
  g record;
  v_lock integer;
  v_shard integer;
begin
  -- Keys and days in a fixed order, so writers that must wait cannot deadlock.
  for g in
    select n.api_key_id, (n.occurred_at at time zone 'UTC')::date as day,
      coalesce(sum(n.cost_usd), 0) as cost_usd,
      count(*) filter (where n.cost_usd is null) as unpriced_events
    from new_rows n
    group by 1, 2
    order by 1, 2
  loop
    v_lock := hashtext(g.api_key_id::text || ':' || g.day::text);
    v_shard := null;
    for i in 0..15 loop
      if pg_try_advisory_xact_lock(v_lock, i) then
        v_shard := i;
        exit;
      end if;
    end loop;
    if v_shard is null then
      v_shard := (txid_current() % 16)::integer;
      perform pg_advisory_xact_lock(v_lock, v_shard);
    end if;
    insert into usage_spend_daily as s (api_key_id, day, shard, cost_usd, unpriced_events)
    values (g.api_key_id, g.day, v_shard, g.cost_usd, g.unpriced_events)
    on conflict (api_key_id, day, shard) do update set
      cost_usd = s.cost_usd + excluded.cost_usd,
      unpriced_events = s.unpriced_events + excluded.unpriced_events;
  end loop;
  return null;
end
$$;

-- Fires after the two rollups' triggers (name order): locks are taken table by table.
create trigger usage_events_spend_daily
  after insert on public.usage_events
  referencing new table as new_rows
  for each statement execute function public.usage_spend_apply();

-- Rows recorded before this migration.
insert into public.usage_spend_daily (api_key_id, day, shard, cost_usd, unpriced_events)
select api_key_id, (occurred_at at time zone 'UTC')::date, 0,
  coalesce(sum(cost_usd), 0), count(*) filter (where cost_usd is null)
from public.usage_events
group by 1, 2;

-- A call that finishes without its runner saying why (failed by another instance, or
-- before any runner took it) still tells how it ended.
create or replace function public.thread_end_reason() returns trigger
language plpgsql
set search_path = public
as $$
begin
  if new.end_reason is null and new.status = 'failed' then
    new.end_reason := case
      when new.error_code in ('instance_lost', 'shutdown', 'cancelled') then new.error_code
      else 'error' end;
  elsif new.end_reason is null and new.status = 'completed' then
    new.end_reason := 'completed';
  end if;
  return new;
end
$$;
create trigger workflow_threads_end_reason before update of status on public.workflow_threads
  for each row execute function public.thread_end_reason();

-- The period holding p_now: its start and when the next one starts (both null for a
-- total budget). Calendar periods in UTC.
create or replace function public.budget_period_bounds(
  p_period text, p_now timestamptz, out period_start timestamptz, out resets_at timestamptz)
language sql
stable
set search_path = public
as $$
  select start_at, ((start_at at time zone 'UTC') + step) at time zone 'UTC'
  from (select case p_period
                 when 'day' then date_trunc('day', p_now, 'UTC')
                 when 'month' then date_trunc('month', p_now, 'UTC') end as start_at,
               case p_period
                 when 'day' then interval '1 day'
                 when 'month' then interval '1 month' end as step) p;
$$;

-- A budget's figures as they stand: money as text. spent_usd: priced ledger cost in the
-- period outside live calls (unpriced_events are not counted); reserved_usd: the live
-- calls' cost so far.
create or replace function public.budget_figures(b api_key_budgets)
returns jsonb
language plpgsql
stable
set search_path = public
as $$
declare
  v_start timestamptz;
  v_reset timestamptz;
  v_total numeric;
  v_unpriced bigint;
  v_live integer;
  v_live_recorded numeric;
  v_reserved numeric;
  v_spent numeric;
begin
  select p.period_start, p.resets_at into v_start, v_reset
  from budget_period_bounds(b.period, now()) p;

  select coalesce(sum(d.cost_usd), 0), coalesce(sum(d.unpriced_events), 0)
  into v_total, v_unpriced
  from usage_spend_daily d
  where d.api_key_id = b.api_key_id
    and (v_start is null or d.day >= (v_start at time zone 'UTC')::date);

  -- What the ledger holds of each live call in the period: its usage_stats total, or,
  -- for a call that began before the period, its part from the hourly rollup.
  with live as (
    select t.budget_reserved_usd,
      case when v_start is null or t.created_at >= v_start
        then coalesce((t.usage_stats ->> 'total_cost_usd')::numeric, 0)
        else (select coalesce(sum(r.cost_usd), 0) from usage_rollup_call_hourly r
              where r.workflow_thread_id = t.workflow_thread_id and r.bucket_hour >= v_start)
      end as recorded
    from workflow_threads t
    where t.api_key_id = b.api_key_id and t.status in ('pending', 'ringing', 'starting', 'running')
  )
  select count(*), coalesce(sum(recorded), 0),
    coalesce(sum(greatest(budget_reserved_usd, recorded)), 0)
  into v_live, v_live_recorded, v_reserved
  from live;
  v_spent := v_total - v_live_recorded;

  return jsonb_build_object(
    'api_key_id', b.api_key_id,
    'limit_usd', b.limit_usd::text,
    'period', b.period,
    'period_start', v_start,
    'resets_at', v_reset,
    'spent_usd', v_spent::text,
    'reserved_usd', v_reserved::text,
    'remaining_usd', (b.limit_usd - v_spent - v_reserved)::text,
    'unpriced_events', v_unpriced,
    'live_calls', v_live,
    'max_call_usd', b.max_call_usd::text,
    'max_concurrent_calls', b.max_concurrent_calls,
    'alert_at', to_jsonb(b.alert_at::text[]),
    'webhook_url', b.webhook_url);
end
$$;

-- A key's budget as it stands (null without one): its figures and the alerts sent in
-- the period.
create or replace function public.budget_state(p_key uuid)
returns jsonb
language plpgsql
stable
set search_path = public
as $$
declare
  b api_key_budgets;
  v_state jsonb;
begin
  select * into b from api_key_budgets where api_key_id = p_key;
  if not found then
    return null;
  end if;
  v_state := budget_figures(b);
  return v_state || jsonb_build_object('alerts_sent', (
    select coalesce(jsonb_agg(jsonb_build_object(
             'type', 'budget.' || a.kind, 'fraction', a.fraction::text,
             'spent_usd', a.spent_usd::text, 'reserved_usd', a.reserved_usd::text,
             'limit_usd', a.limit_usd::text, 'sent_at', a.created_at)
           order by a.created_at, a.kind desc, a.fraction), '[]'::jsonb)
    from budget_alerts a
    where a.api_key_id = p_key
      and a.period_start = coalesce((v_state ->> 'period_start')::timestamptz, '-infinity')));
end
$$;

-- Claim the alerts a key's state has crossed and nobody sent yet in its period:
-- each alert-at fraction of the limit reached by spent + reserved, and the limit
-- itself. Only one caller wins each (the insert's conflict), so each is sent once.
create or replace function public.budget_claim_alerts(p_state jsonb)
returns jsonb
language plpgsql
volatile
set search_path = public
as $$
declare
  v_limit numeric := (p_state ->> 'limit_usd')::numeric;
  v_spent numeric := (p_state ->> 'spent_usd')::numeric;
  v_reserved numeric := (p_state ->> 'reserved_usd')::numeric;
  v_claimed jsonb;
begin
  if p_state is null then
    return '[]'::jsonb;
  end if;
  with crossed as (
    select 'threshold' as kind, f.x::numeric as fraction
    from jsonb_array_elements_text(p_state -> 'alert_at') f(x)
    where v_spent + v_reserved >= f.x::numeric * v_limit
    union all
    select 'exhausted', 1 where v_spent + v_reserved >= v_limit
  ),
  claimed as (
    insert into budget_alerts as a (
      api_key_id, period_start, kind, fraction, period, spent_usd, reserved_usd, limit_usd)
    select (p_state ->> 'api_key_id')::uuid,
      coalesce((p_state ->> 'period_start')::timestamptz, '-infinity'),
      c.kind, c.fraction, p_state ->> 'period', v_spent, v_reserved, v_limit
    from crossed c
    order by c.kind, c.fraction
    on conflict do nothing
    returning a.*
  )
  select coalesce(jsonb_agg(jsonb_build_object(
           'api_key_id', c.api_key_id, 'type', 'budget.' || c.kind,
           'fraction', c.fraction::text, 'period', c.period,
           'period_start', p_state -> 'period_start', 'resets_at', p_state -> 'resets_at',
           'spent_usd', c.spent_usd::text, 'reserved_usd', c.reserved_usd::text,
           'limit_usd', c.limit_usd::text, 'webhook_url', p_state -> 'webhook_url',
           'sent_at', c.created_at) order by c.kind desc, c.fraction), '[]'::jsonb)
  into v_claimed
  from claimed c;
  return v_claimed;
end
$$;

-- A key's budget (null without one); with p_claim, the alerts it crossed are claimed
-- and listed under 'alerts_new' for the caller to send.
create or replace function public.budget_status(p_key uuid, p_claim boolean default false)
returns jsonb
language plpgsql
volatile
set search_path = public
as $$
declare
  v_state jsonb := budget_state(p_key);
begin
  if v_state is null or not p_claim then
    return v_state;
  end if;
  return v_state || jsonb_build_object('alerts_new', budget_claim_alerts(v_state));
end
$$;

-- A live call reports its cost so far (its reservation) and reads its key's budget,
-- claiming the alerts crossed; null when the key has no budget.
create or replace function public.budget_call_status(p_thread uuid, p_reserved_usd numeric)
returns jsonb
language plpgsql
volatile
set search_path = public
as $$
declare
  v_key uuid;
begin
  -- Written only when it changed (a read between usage events writes nothing).
  update workflow_threads
  set budget_reserved_usd = greatest(coalesce(p_reserved_usd, 0), 0)
  where workflow_thread_id = p_thread and status in ('pending', 'ringing', 'starting', 'running')
    and budget_reserved_usd <> greatest(coalesce(p_reserved_usd, 0), 0)
  returning api_key_id into v_key;
  if v_key is null then
    select api_key_id into v_key from workflow_threads where workflow_thread_id = p_thread;
  end if;
  return budget_status(v_key, true);
end
$$;

-- A join: check the key's budget and create the call's thread (p_thread: its columns),
-- in one statement under a lock on the budget row. Answers
-- {"admitted": true, "budgeted": <the key has a budget>, "max_call_usd": ...}, or
-- {"admitted": false, "error": "budget_exhausted" | "too_many_calls", ...the budget}
-- having created nothing.
create or replace function public.admit_call(p_thread jsonb)
returns jsonb
language plpgsql
volatile
set search_path = public
as $$
declare
  v_key uuid := (p_thread ->> 'api_key_id')::uuid;
  v_budget api_key_budgets;
  v_start timestamptz;
  v_live integer;
  v_unrecorded numeric;
  v_total numeric;
  v_columns text;
begin
  select * into v_budget from api_key_budgets where api_key_id = v_key for update;
  if found then
    -- The figures of budget_figures, only as far as the check needs them: remaining =
    -- limit - the period's ledger total - what live calls reserve beyond it.
    v_start := case v_budget.period
      when 'day' then date_trunc('day', now(), 'UTC')
      when 'month' then date_trunc('month', now(), 'UTC') end;
    select count(*), coalesce(sum(greatest(t.budget_reserved_usd - case
             when v_start is null or t.created_at >= v_start
               then coalesce((t.usage_stats ->> 'total_cost_usd')::numeric, 0)
             else (select coalesce(sum(r.cost_usd), 0) from usage_rollup_call_hourly r
                   where r.workflow_thread_id = t.workflow_thread_id
                     and r.bucket_hour >= v_start) end, 0)), 0)
    into v_live, v_unrecorded
    from workflow_threads t
    where t.api_key_id = v_key and t.status in ('pending', 'ringing', 'starting', 'running');
    if v_budget.max_concurrent_calls is not null and v_live >= v_budget.max_concurrent_calls then
      return budget_figures(v_budget) || '{"admitted": false, "error": "too_many_calls"}'::jsonb;
    end if;
    select coalesce(sum(d.cost_usd), 0) into v_total
    from usage_spend_daily d
    where d.api_key_id = v_key
      and (v_start is null or d.day >= (v_start at time zone 'UTC')::date);
    if v_budget.limit_usd - v_total - v_unrecorded <= 0 then
      return budget_figures(v_budget) || '{"admitted": false, "error": "budget_exhausted"}'::jsonb;
    end if;
  end if;

  select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into v_columns
  from pg_attribute a
  where a.attrelid = 'public.workflow_threads'::regclass and a.attnum > 0
    and not a.attisdropped and p_thread ? a.attname::text;
  execute format(
    'insert into workflow_threads (%1$s) select %1$s from jsonb_populate_record(null::workflow_threads, $1)',
    v_columns) using p_thread;

  return jsonb_build_object('admitted', true, 'budgeted', v_budget.api_key_id is not null,
    'max_call_usd', v_budget.max_call_usd::text);
end
$$;

revoke execute on function public.thread_end_reason() from public, anon, authenticated;
revoke execute on function public.budget_period_bounds(text, timestamptz) from public, anon, authenticated;
revoke execute on function public.usage_spend_apply() from public, anon, authenticated;
revoke execute on function public.budget_figures(api_key_budgets) from public, anon, authenticated;
revoke execute on function public.budget_state(uuid) from public, anon, authenticated;
revoke execute on function public.budget_claim_alerts(jsonb) from public, anon, authenticated;
revoke execute on function public.budget_status(uuid, boolean) from public, anon, authenticated;
revoke execute on function public.budget_call_status(uuid, numeric) from public, anon, authenticated;
revoke execute on function public.admit_call(jsonb) from public, anon, authenticated;
grant execute on function public.budget_period_bounds(text, timestamptz) to service_role;
grant execute on function public.budget_figures(api_key_budgets) to service_role;
grant execute on function public.budget_state(uuid) to service_role;
grant execute on function public.budget_claim_alerts(jsonb) to service_role;
grant execute on function public.budget_status(uuid, boolean) to service_role;
grant execute on function public.budget_call_status(uuid, numeric) to service_role;
grant execute on function public.admit_call(jsonb) to service_role;
