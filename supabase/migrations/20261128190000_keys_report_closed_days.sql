-- The operator's report of every key (usage_keys_report) reads the whole days of its
-- range once: the figures of every key over a span of closed UTC days are built from
-- the rollups the first time a report asks for that span, kept (usage_report_cache),
-- and each later report over the same days reads them and adds, live, only what lies
-- outside them (the partial days at either end: rollup hours, and the ledger's partial
-- hours; a partial hour mostly inside the range, or the current one, is read as its
-- hour's rollup less the ledger's rows outside the range). The default range (the last
-- 30 days, to now) asks for the same span of days all day long, so a report reads about
-- a fifteenth of the rows it did.
--
-- Exact, not approximate:
-- - Sums add. Distinct calls and end users do not: a call or end user seen outside the
--   kept days counts only when the kept days do not hold it (the call rollup, by call;
--   usage_report_cache_users, by end user).
-- - A kept call's seconds are kept only when the call has ended (its bot start and end
--   are set, and never change after; a call's start is set before its first usage);
--   a call started but not ended when the days were kept is listed
--   (usage_report_cache_open_calls) and its seconds are read live each time.
-- - Every write to the ledger (insert, update: a repricing; delete) forgets every kept
--   span holding a day it wrote, in its own transaction (usage_report_cache_forget,
--   a statement trigger). Keeping a span and writing into it are ordered by advisory
--   locks per UTC day: a writer holds its days' locks shared until it commits; a report
--   keeps a span only when it can take every day's lock exclusively at once (it tries
--   and never waits: when a day is being written, it answers live and keeps nothing).
--   So a write either committed before the span was read, or its trigger forgets the
--   span after the report that kept it committed. Only days before the current UTC day
--   are ever kept.
-- - A migration that rewrites the ledger or the rollups must empty usage_report_cache.
--
-- usage_keys_report(start, end, use_cache default true): use_cache => false answers
-- from the rollups and the ledger alone, as before (tests compare the two).

create table public.usage_report_cache (
  id bigint generated always as identity primary key,
  day_start date not null,
  day_end date not null,
  built_at timestamptz not null default now(),
  unique (day_start, day_end),
  check (day_end > day_start)
);

create table public.usage_report_cache_keys (
  cache_id bigint not null references public.usage_report_cache (id) on delete cascade,
  api_key_id uuid not null,
  events bigint not null,
  llm_calls bigint not null,
  input_tokens bigint not null,
  output_tokens bigint not null,
  cached_tokens bigint not null,
  tts_characters bigint not null,
  stt_seconds numeric not null,
  telephony_seconds numeric not null,
  cost_usd numeric not null,
  unpriced_events bigint not null,
  error_events bigint not null,
  calls bigint not null,
  ended_call_seconds numeric not null,
  end_users bigint not null,
  cost_by_kind jsonb not null,
  primary key (cache_id, api_key_id)
);

create table public.usage_report_cache_users (
  cache_id bigint not null references public.usage_report_cache (id) on delete cascade,
  api_key_id uuid not null,
  end_user_id text not null,
  primary key (cache_id, api_key_id, end_user_id)
);

create table public.usage_report_cache_open_calls (
  cache_id bigint not null references public.usage_report_cache (id) on delete cascade,
  api_key_id uuid not null,
  workflow_thread_id uuid not null,
  primary key (cache_id, workflow_thread_id)
);

alter table public.usage_report_cache enable row level security;
alter table public.usage_report_cache_keys enable row level security;
alter table public.usage_report_cache_users enable row level security;
alter table public.usage_report_cache_open_calls enable row level security;
create policy service_role_all on public.usage_report_cache
  for all to service_role using (true) with check (true);
create policy service_role_all on public.usage_report_cache_keys
  for all to service_role using (true) with check (true);
create policy service_role_all on public.usage_report_cache_users
  for all to service_role using (true) with check (true);
create policy service_role_all on public.usage_report_cache_open_calls
  for all to service_role using (true) with check (true);

-- The report reads the ledger's partial hours of every key at once: by time alone (a
-- btree, which, unlike the BRIN it replaces, needs no summarizing to see the newest rows).
create index usage_events_occurred_idx on public.usage_events (occurred_at);
drop index public.usage_events_occurred_brin;

-- The report reads a few hours of the rollups (the partial days at either end) and asks,
-- call by call, whether a call has hours among the kept days.
create index usage_rollup_call_hourly_hour_idx on public.usage_rollup_call_hourly (bucket_hour);
create index usage_rollup_dims_hourly_hour_idx on public.usage_rollup_dims_hourly (bucket_hour);
create index usage_rollup_call_hourly_thread_hour_idx
  on public.usage_rollup_call_hourly (workflow_thread_id, bucket_hour);
drop index public.usage_rollup_call_hourly_thread_idx;

-- The advisory lock of a UTC day: (class, days since 2000-01-01).
create or replace function public.usage_report_day_lock() returns integer
language sql
immutable
as $$ select hashtext('usage_report_cache') $$;

create or replace function public.usage_report_cache_forget() returns trigger
language plpgsql
set search_path = public
as $$
declare
  v_days date[];
  v_day date;
begin
  if tg_op = 'INSERT' then
    select array_agg(distinct (n.occurred_at at time zone 'UTC')::date) into v_days
    from new_rows n;
  elsif tg_op = 'UPDATE' then
    select array_agg(distinct d) into v_days
    from (select (n.occurred_at at time zone 'UTC')::date as d from new_rows n
          union all
          select (o.occurred_at at time zone 'UTC')::date from old_rows o) x;
  else
    select array_agg(distinct (o.occurred_at at time zone 'UTC')::date) into v_days
    from old_rows o;
  end if;
  if v_days is null then
    return null;
  end if;
  -- array_agg(distinct) sorts: the locks are always taken in day order.
  foreach v_day in array v_days loop
    perform pg_advisory_xact_lock_shared(usage_report_day_lock(), v_day - date '2000-01-01');
  end loop;
  delete from usage_report_cache c
  where exists (select 1 from unnest(v_days) d where d >= c.day_start and d < c.day_end);
  return null;
end
$$;

create trigger usage_events_report_cache_insert
  after insert on public.usage_events
  referencing new table as new_rows
  for each statement execute function public.usage_report_cache_forget();
create trigger usage_events_report_cache_update
  after update on public.usage_events
  referencing old table as old_rows new table as new_rows
  for each statement execute function public.usage_report_cache_forget();
create trigger usage_events_report_cache_delete
  after delete on public.usage_events
  referencing old table as old_rows
  for each statement execute function public.usage_report_cache_forget();

-- The kept span [p_day_start, p_day_end): its id, built now when missing; null when a
-- day in it is being written (then the report answers live).
create or replace function public.usage_report_cache_for(p_day_start date, p_day_end date)
returns bigint
language plpgsql
set search_path = public
set work_mem = '64MB'
as $$
declare
  v_id bigint;
  v_from timestamptz := p_day_start::timestamp at time zone 'UTC';
  v_to timestamptz := p_day_end::timestamp at time zone 'UTC';
begin
  select c.id into v_id from usage_report_cache c
  where c.day_start = p_day_start and c.day_end = p_day_end;
  if v_id is not null then
    return v_id;
  end if;
  for i in 0 .. (p_day_end - p_day_start - 1) loop
    if not pg_try_advisory_xact_lock(usage_report_day_lock(),
                                     (p_day_start + i) - date '2000-01-01') then
      return null;
    end if;
  end loop;
  -- Every day is ours: no write into them is open. Read them afresh (a span kept by a
  -- report that committed meanwhile is used as it is).
  select c.id into v_id from usage_report_cache c
  where c.day_start = p_day_start and c.day_end = p_day_end;
  if v_id is not null then
    return v_id;
  end if;
  insert into usage_report_cache (day_start, day_end) values (p_day_start, p_day_end)
  returning id into v_id;

  insert into usage_report_cache_keys (cache_id, api_key_id, events, llm_calls,
    input_tokens, output_tokens, cached_tokens, tts_characters, stt_seconds,
    telephony_seconds, cost_usd, unpriced_events, error_events, calls,
    ended_call_seconds, end_users, cost_by_kind)
  with per_call as (
    select c.api_key_id, c.workflow_thread_id, sum(c.events) as events,
      sum(c.llm_calls) as llm_calls, sum(c.input_tokens) as input_tokens,
      sum(c.output_tokens) as output_tokens, sum(c.cache_read_tokens) as cached_tokens,
      sum(c.tts_characters) as tts_characters, sum(c.stt_seconds) as stt_seconds,
      sum(c.telephony_seconds) as telephony_seconds, sum(c.cost_usd) as cost_usd,
      sum(c.unpriced_events) as unpriced_events, sum(c.error_events) as error_events
    from usage_rollup_call_hourly c
    where c.bucket_hour >= v_from and c.bucket_hour < v_to
    group by c.api_key_id, c.workflow_thread_id
  ),
  users as (
    select c.api_key_id, count(distinct c.end_user_id) as end_users
    from usage_rollup_call_hourly c
    where c.bucket_hour >= v_from and c.bucket_hour < v_to and c.end_user_id is not null
    group by c.api_key_id
  ),
  kinds as (
    select k.api_key_id, jsonb_object_agg(k.kind, k.cost_usd::text) as cost_by_kind
    from (
      select r.api_key_id, r.kind, sum(r.cost_usd) as cost_usd
      from usage_rollup_dims_hourly r
      where r.bucket_hour >= v_from and r.bucket_hour < v_to
      group by r.api_key_id, r.kind
    ) k
    group by k.api_key_id
  ),
  per_key as (
    select p.api_key_id, sum(p.events) as events, sum(p.llm_calls) as llm_calls,
      sum(p.input_tokens) as input_tokens, sum(p.output_tokens) as output_tokens,
      sum(p.cached_tokens) as cached_tokens, sum(p.tts_characters) as tts_characters,
      sum(p.stt_seconds) as stt_seconds, sum(p.telephony_seconds) as telephony_seconds,
      sum(p.cost_usd) as cost_usd, sum(p.unpriced_events) as unpriced_events,
      sum(p.error_events) as error_events, count(*) as calls,
      coalesce(sum(extract(epoch from t.bot_ended_at - t.bot_started_at))
               filter (where t.bot_started_at is not null and t.bot_ended_at is not null),
               0) as ended_call_seconds
    from per_call p
    join workflow_threads t on t.workflow_thread_id = p.workflow_thread_id
    group by p.api_key_id
  )
  select v_id, p.api_key_id, p.events, p.llm_calls, p.input_tokens, p.output_tokens,
    p.cached_tokens, p.tts_characters, p.stt_seconds, p.telephony_seconds, p.cost_usd,
    p.unpriced_events, p.error_events, p.calls, p.ended_call_seconds,
    coalesce(u.end_users, 0), coalesce(k.cost_by_kind, '{}'::jsonb)
  from per_key p
  left join users u on u.api_key_id = p.api_key_id
  left join kinds k on k.api_key_id = p.api_key_id;

  insert into usage_report_cache_users (cache_id, api_key_id, end_user_id)
  select distinct v_id, c.api_key_id, c.end_user_id
  from usage_rollup_call_hourly c
  where c.bucket_hour >= v_from and c.bucket_hour < v_to and c.end_user_id is not null;

  insert into usage_report_cache_open_calls (cache_id, api_key_id, workflow_thread_id)
  select distinct v_id, c.api_key_id, c.workflow_thread_id
  from usage_rollup_call_hourly c
  join workflow_threads t on t.workflow_thread_id = c.workflow_thread_id
  where c.bucket_hour >= v_from and c.bucket_hour < v_to
    and t.bot_started_at is not null and t.bot_ended_at is null;

  -- A few spans are kept (the ranges the console asks for); the oldest go.
  delete from usage_report_cache c
  where c.id in (select x.id from usage_report_cache x order by x.built_at desc, x.id desc
                 offset 8);
  return v_id;
end
$$;

drop function public.usage_keys_report(timestamptz, timestamptz);

create or replace function public.usage_keys_report(
  p_start timestamptz,
  p_end timestamptz,
  p_use_cache boolean default true
)
returns json
language plpgsql
volatile
set search_path = public
set work_mem = '64MB'
as $$
declare
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
  -- The closed UTC days inside the range: from the first midnight at or after the start
  -- to the last midnight at or before the end, never past the current day's.
  day_start date := (date_trunc('day', p_start, 'UTC')
    + case when date_trunc('day', p_start, 'UTC') = p_start then interval '0' else interval '1 day' end)
    at time zone 'UTC';
  day_end date := least(date_trunc('day', p_end, 'UTC'), date_trunc('day', now(), 'UTC'))
    at time zone 'UTC';
  v_cache bigint;
  cut_start timestamptz;
  cut_end timestamptz;
  head_sub boolean := false;
  tail_sub boolean := false;
  result json;
begin
  if p_start is null or p_end is null or p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  else
    -- A partial hour is read as its hour's rollup less the ledger's rows outside the
    -- range when those are fewer than the rows inside it: when the part outside is the
    -- shorter, counting only time that has passed (a range ending about now leaves
    -- nothing of its hour outside it yet).
    head_sub := p_start - (whole_start - interval '1 hour')
      < least(whole_start, now()) - p_start;
    tail_sub := greatest(least(whole_end + interval '1 hour', now()) - p_end, interval '0')
      < least(p_end, now()) - whole_end;
  end if;
  if coalesce(p_use_cache, true) and day_end > day_start then
    v_cache := usage_report_cache_for(day_start, day_end);
  end if;
  if v_cache is not null then
    cut_start := day_start::timestamp at time zone 'UTC';
    cut_end := day_end::timestamp at time zone 'UTC';
  else
    cut_start := whole_end;  -- nothing kept: the rollups' hours are all read
    cut_end := whole_end;
  end if;

  -- Dynamic SQL, so that the ledger's rows are planned for the range given.
  --   $1, $2: the ledger's rows read at the head, [$1, $2), counted with sign $3;
  --   $4, $5: at the tail, [$4, $5), sign $6 (-1: rows of a rollup hour outside the range);
  --   $7, $8: the rollups' hours read, [$7, $9) and [$10, $8) ($9, $10: the kept days);
  --   $11: the kept span (null: none).
  execute $q$
  with edge as materialized (
    select e.api_key_id as key_id, e.workflow_thread_id, e.end_user_id, e.kind,
      sum(s.sign) as events,
      sum(case when e.kind = 'llm' then s.sign else 0 end) as llm_calls,
      sum(s.sign * e.input_tokens) as input_tokens,
      sum(s.sign * e.output_tokens) as output_tokens,
      sum(s.sign * e.cache_read_tokens) as cache_read_tokens,
      sum(case when e.kind = 'tts' then s.sign * e.characters else 0 end) as tts_characters,
      sum(case when e.kind = 'stt' then s.sign * e.audio_seconds else 0 end) as stt_seconds,
      sum(case when e.kind = 'telephony' then s.sign * e.audio_seconds else 0 end)
        as telephony_seconds,
      sum(s.sign * coalesce(e.cost_usd, 0)) as cost_usd,
      sum(case when e.cost_usd is null then s.sign else 0 end) as unpriced_events,
      sum(case when e.is_error then s.sign else 0 end) as error_events
    from usage_events e
    cross join lateral (select case when e.occurred_at < $2 then $3 else $6 end as sign) s
    where (e.occurred_at >= $1 and e.occurred_at < $2)
       or (e.occurred_at >= $4 and e.occurred_at < $5)
    group by e.api_key_id, e.workflow_thread_id, e.end_user_id, e.kind
  ),
  -- Each call's figures outside the kept days (a call with no event left is not one).
  calls_part as materialized (
    select key_id, workflow_thread_id, end_user_id, sum(events) as events,
      sum(llm_calls) as llm_calls, sum(input_tokens) as input_tokens,
      sum(output_tokens) as output_tokens, sum(cache_read_tokens) as cache_read_tokens,
      sum(tts_characters) as tts_characters, sum(stt_seconds) as stt_seconds,
      sum(telephony_seconds) as telephony_seconds, sum(cost_usd) as cost_usd,
      sum(unpriced_events) as unpriced_events, sum(error_events) as error_events
    from (
      select c.api_key_id as key_id, c.workflow_thread_id, c.end_user_id, c.events,
        c.llm_calls, c.input_tokens, c.output_tokens, c.cache_read_tokens,
        c.tts_characters, c.stt_seconds, c.telephony_seconds, c.cost_usd,
        c.unpriced_events, c.error_events
      from usage_rollup_call_hourly c
      where (c.bucket_hour >= $7 and c.bucket_hour < $9)
         or (c.bucket_hour >= $10 and c.bucket_hour < $8)
      union all
      select key_id, workflow_thread_id, end_user_id, events, llm_calls, input_tokens,
        output_tokens, cache_read_tokens, tts_characters, stt_seconds, telephony_seconds,
        cost_usd, unpriced_events, error_events
      from edge
    ) x
    group by key_id, workflow_thread_id, end_user_id
    having sum(events) > 0
  ),
  kept as materialized (
    select k.* from usage_report_cache_keys k where k.cache_id = $11
  ),
  live_sums as (
    select key_id, sum(events) as events, sum(llm_calls) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens, sum(tts_characters) as tts_characters,
      sum(stt_seconds) as stt_seconds, sum(telephony_seconds) as telephony_seconds,
      sum(cost_usd) as cost_usd,
      sum(unpriced_events) as unpriced_events, sum(error_events) as error_events
    from calls_part
    group by key_id
  ),
  -- Calls seen outside the kept days that the kept days do not hold.
  new_calls as (
    select distinct p.key_id, p.workflow_thread_id
    from calls_part p
    where not exists (  -- nothing kept: [$9, $10) is empty
      select 1 from usage_rollup_call_hourly h
      where h.workflow_thread_id = p.workflow_thread_id
        and h.bucket_hour >= $9 and h.bucket_hour < $10)
  ),
  live_calls as (
    select n.key_id, count(*) as calls,
      coalesce(sum(extract(epoch from coalesce(t.bot_ended_at, now()) - t.bot_started_at))
               filter (where t.bot_started_at is not null), 0) as call_seconds
    from new_calls n
    join workflow_threads t on t.workflow_thread_id = n.workflow_thread_id
    group by n.key_id
  ),
  -- Kept calls still running when their days were kept: timed now.
  open_calls as (
    select o.api_key_id as key_id, sum(extract(epoch from
             coalesce(t.bot_ended_at, now()) - t.bot_started_at)) as call_seconds
    from usage_report_cache_open_calls o
    join workflow_threads t on t.workflow_thread_id = o.workflow_thread_id
    where o.cache_id = $11
    group by o.api_key_id
  ),
  live_users as (
    select u.key_id, count(*) as end_users
    from (select distinct key_id, end_user_id from calls_part where end_user_id is not null) u
    where not exists (
      select 1 from usage_report_cache_users c
      where c.cache_id = $11 and c.api_key_id = u.key_id and c.end_user_id = u.end_user_id)
    group by u.key_id
  ),
  live_kinds as materialized (
    select x.key_id, x.kind, sum(x.cost_usd) as cost_usd
    from (
      select r.api_key_id as key_id, r.kind, r.events, r.cost_usd
      from usage_rollup_dims_hourly r
      where (r.bucket_hour >= $7 and r.bucket_hour < $9)
         or (r.bucket_hour >= $10 and r.bucket_hour < $8)
      union all
      select key_id, kind, events, cost_usd from edge
    ) x
    group by x.key_id, x.kind
    having sum(x.events) > 0
  ),
  -- Every key's cost by kind: the kept days' as kept, unless the key has some outside.
  kind_rows as materialized (
    select x.key_id, x.kind, sum(x.cost_usd) as cost_usd
    from (
      select key_id, kind, cost_usd from live_kinds
      union all
      select k.api_key_id, j.key, j.value::numeric
      from kept k cross join lateral jsonb_each_text(k.cost_by_kind) j
    ) x
    group by x.key_id, x.kind
  ),
  merged_kinds as (
    select r.key_id, json_object_agg(r.kind, r.cost_usd::text) as cost_by_kind
    from kind_rows r
    where r.key_id in (select key_id from live_kinds)
    group by r.key_id
  ),
  per_key as (
    select a.id, a.name, a.owner, coalesce(a.key_prefix, a.unkey_key_id) as key,
      a.is_active, a.stripe_customer_id,
      coalesce(k.calls, 0) + coalesce(c.calls, 0) as calls,
      coalesce(k.end_users, 0) + coalesce(u.end_users, 0) as end_users,
      (coalesce(k.events, 0) + coalesce(s.events, 0))::bigint as events,
      (coalesce(k.llm_calls, 0) + coalesce(s.llm_calls, 0))::bigint as llm_calls,
      (coalesce(k.input_tokens, 0) + coalesce(s.input_tokens, 0))::bigint as input_tokens,
      (coalesce(k.output_tokens, 0) + coalesce(s.output_tokens, 0))::bigint as output_tokens,
      (coalesce(k.cached_tokens, 0) + coalesce(s.cached_tokens, 0))::bigint as cached_tokens,
      (coalesce(k.tts_characters, 0) + coalesce(s.tts_characters, 0))::bigint
        as tts_characters,
      coalesce(k.stt_seconds, 0) + coalesce(s.stt_seconds, 0) as stt_seconds,
      coalesce(k.telephony_seconds, 0) + coalesce(s.telephony_seconds, 0)
        as telephony_seconds,
      coalesce(k.cost_usd, 0) + coalesce(s.cost_usd, 0) as cost_usd,
      (coalesce(k.unpriced_events, 0) + coalesce(s.unpriced_events, 0))::bigint
        as unpriced_events,
      (coalesce(k.error_events, 0) + coalesce(s.error_events, 0))::bigint as error_events,
      case when k.api_key_id is null and s.key_id is null then 0
           else round(coalesce(k.ended_call_seconds, 0) + coalesce(o.call_seconds, 0)
                      + coalesce(c.call_seconds, 0), 3) end as call_seconds,
      coalesce(m.cost_by_kind, k.cost_by_kind::json, '{}'::json) as cost_by_kind,
      b.state -> a.id::text as budget
    from api_keys a
    left join kept k on k.api_key_id = a.id
    left join live_sums s on s.key_id = a.id
    left join live_calls c on c.key_id = a.id
    left join open_calls o on o.key_id = a.id
    left join live_users u on u.key_id = a.id
    left join merged_kinds m on m.key_id = a.id
    cross join (select budget_states() as state) b
  ),
  totals as (
    select coalesce(sum(calls), 0) as calls, coalesce(sum(end_users), 0) as end_users,
      coalesce(sum(events), 0) as events, coalesce(sum(llm_calls), 0) as llm_calls,
      coalesce(sum(input_tokens), 0) as input_tokens,
      coalesce(sum(output_tokens), 0) as output_tokens,
      coalesce(sum(cached_tokens), 0) as cached_tokens,
      coalesce(sum(tts_characters), 0) as tts_characters,
      coalesce(sum(stt_seconds), 0) as stt_seconds,
      coalesce(sum(telephony_seconds), 0) as telephony_seconds,
      coalesce(sum(cost_usd), 0) as cost_usd,
      coalesce(sum(unpriced_events), 0) as unpriced_events,
      coalesce(sum(error_events), 0) as error_events,
      coalesce(sum(call_seconds), 0) as call_seconds,
      (select coalesce(json_object_agg(kind, cost::text), '{}'::json)
       from (select kind, sum(cost_usd) as cost
             from kind_rows group by kind) x) as cost_by_kind
    from per_key
  )
  -- Rows made JSON whole (compact, with the columns' names).
  select json_build_object(
    'totals', (
      select row_to_json(x) from (
        select t.calls, round(t.call_seconds / 60, 3)::text as minutes,
          t.call_seconds::text as call_seconds, t.end_users, t.events, t.llm_calls,
          t.input_tokens, t.output_tokens, t.cached_tokens, t.tts_characters,
          t.stt_seconds::text as stt_seconds, t.telephony_seconds::text as telephony_seconds,
          t.cost_usd::text as cost_usd, t.cost_by_kind, t.unpriced_events, t.error_events
        from totals t) x),
    'keys', coalesce((
      select json_agg(x order by x.cost_usd::numeric desc, x.name, x.api_key_id) from (
        select p.id as api_key_id, p.name, p.owner, p.key, p.is_active,
          p.stripe_customer_id, p.calls, round(p.call_seconds / 60, 3)::text as minutes,
          p.call_seconds::text as call_seconds, p.end_users, p.events, p.llm_calls,
          p.input_tokens, p.output_tokens, p.cached_tokens, p.tts_characters,
          p.stt_seconds::text as stt_seconds, p.telephony_seconds::text as telephony_seconds,
          p.cost_usd::text as cost_usd, p.cost_by_kind, p.unpriced_events, p.error_events,
          p.budget
        from per_key p) x), '[]'::json));
  $q$
  into result
  using
    case when head_sub then whole_start - interval '1 hour' else p_start end,
    case when head_sub then p_start else whole_start end,
    case when head_sub then -1 else 1 end,
    case when tail_sub then p_end else whole_end end,
    case when tail_sub then whole_end + interval '1 hour' else p_end end,
    case when tail_sub then -1 else 1 end,
    case when head_sub then whole_start - interval '1 hour' else whole_start end,
    case when tail_sub then whole_end + interval '1 hour' else whole_end end,
    cut_start,
    cut_end,
    v_cache;
  return result;
end
$$;

revoke execute on function public.usage_keys_report(timestamptz, timestamptz, boolean)
  from public, anon, authenticated;
grant execute on function public.usage_keys_report(timestamptz, timestamptz, boolean)
  to service_role;
revoke execute on function public.usage_report_cache_for(date, date)
  from public, anon, authenticated;
revoke execute on function public.usage_report_cache_forget() from public, anon, authenticated;
