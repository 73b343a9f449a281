-- Phone calls over Twilio Media Streams.
--
-- phone_numbers: which API key pays for the calls to a number, and how its bot behaves.
-- telephony_calls: one row per phone call leg (its thread, direction, Twilio call SID)
-- with the call's one-time stream token, stored only as its sha256. The token is spent
-- exactly once, atomically, by whichever comes first: the Media Stream that presents it
-- (claim_telephony_stream) or Twilio's report that the call ended without a stream.
--
-- Calls placed by Flow ring before they run: workflow_threads.status gains 'ringing'.
-- The ledger gains the kind 'telephony' (a call leg: provider twilio, model inbound or
-- outbound, audio_seconds its exact duration), summed into usage_stats, the per-call
-- rollup, usage_report and dashboard_summary as telephony_seconds. The dashboard's
-- stt_seconds now counts STT seconds only, as usage_report's always did.

create table public.phone_numbers (
  id uuid primary key default gen_random_uuid(),
  number text not null unique
    constraint phone_numbers_number_e164 check (number ~ '^\+[1-9][0-9]{1,14}$'),
  api_key_id uuid not null references public.api_keys (id) on delete cascade,
  config jsonb not null default '{}'::jsonb
    constraint phone_numbers_config_object check (jsonb_typeof(config) = 'object'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index phone_numbers_api_key_idx on public.phone_numbers (api_key_id);
create trigger phone_numbers_touch before update on public.phone_numbers
  for each row execute function public.touch_updated_at();

create table public.telephony_calls (
  workflow_thread_id uuid primary key
    references public.workflow_threads (workflow_thread_id) on delete cascade,
  provider text not null default 'twilio' check (provider in ('twilio')),
  direction text not null check (direction in ('inbound', 'outbound')),
  call_sid text unique check (call_sid is null or length(call_sid) between 1 and 64),
  flow_number text not null,
  remote_party text,
  stream_token_hash text not null unique check (stream_token_hash ~ '^[0-9a-f]{64}$'),
  stream_token_seconds integer not null check (stream_token_seconds between 1 and 3600),
  token_spent_at timestamptz,
  stream_sid text,
  stream_started_at timestamptz,
  stream_ended_at timestamptz,
  twilio_status text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create trigger telephony_calls_touch before update on public.telephony_calls
  for each row execute function public.touch_updated_at();

alter table public.phone_numbers enable row level security;
alter table public.telephony_calls enable row level security;
create policy service_role_all on public.phone_numbers
  for all to service_role using (true) with check (true);
create policy service_role_all on public.telephony_calls
  for all to service_role using (true) with check (true);
grant select, insert, update, delete on public.phone_numbers to service_role;
grant select, insert, update, delete on public.telephony_calls to service_role;

alter table public.workflow_threads drop constraint workflow_threads_status_check;
alter table public.workflow_threads add constraint workflow_threads_status_check
  check (status in (
    'pending', 'ringing', 'starting', 'running', 'processing', 'completed', 'failed'));
-- The index of unfinished calls covers ringing ones too (abandoned calls are found by it).
drop index public.workflow_threads_status_idx;
create index workflow_threads_status_idx on public.workflow_threads (status)
  where status in ('pending', 'ringing', 'starting', 'running', 'processing');
alter table public.workflow_threads drop constraint workflow_threads_transport_check;
alter table public.workflow_threads add constraint workflow_threads_transport_check
  check (transport in ('daily', 'simulated', 'webrtc', 'twilio'));

alter table public.usage_events drop constraint usage_events_kind_valid;
alter table public.usage_events add constraint usage_events_kind_valid
  check (kind in ('llm', 'tts', 'stt', 'telephony'));

-- Rows recorded before telephony existed hold none: 0 is exact for them.
alter table public.usage_rollup_call_hourly
  add column telephony_seconds numeric not null default 0;

-- Spend a stream token: the call whose token hashes to p_token_hash, unspent, younger
-- than its validity and belonging to the call p_call_sid. Answers
-- {"workflow_thread_id": ...} or {"refused": "unknown" | "spent" | "expired" |
-- "other_call"}; a refused token is left as it was.
create or replace function public.claim_telephony_stream(
  p_token_hash text, p_call_sid text, p_stream_sid text)
returns jsonb
language plpgsql
set search_path = public
as $$
declare
  c telephony_calls;
begin
  select * into c from telephony_calls
  where stream_token_hash = p_token_hash
  for no key update;
  if not found then
    return jsonb_build_object('refused', 'unknown');
  end if;
  if c.token_spent_at is not null then
    return jsonb_build_object('refused', 'spent');
  end if;
  if c.call_sid is distinct from p_call_sid then
    return jsonb_build_object('refused', 'other_call');
  end if;
  if c.created_at + make_interval(secs => c.stream_token_seconds) <= now() then
    return jsonb_build_object('refused', 'expired');
  end if;
  update telephony_calls
  set token_spent_at = now(), stream_sid = p_stream_sid
  where workflow_thread_id = c.workflow_thread_id;
  return jsonb_build_object('workflow_thread_id', c.workflow_thread_id);
end
$$;

revoke execute on function public.claim_telephony_stream(text, text, text)
  from public, anon, authenticated;
grant execute on function public.claim_telephony_stream(text, text, text) to service_role;

-- The functions below are the versions of 20261128100000_usage_modalities (the writer's
-- from 20261128130000_price_provenance) with telephony_seconds beside stt_seconds.

create or replace function public.record_usage_events(events jsonb)
returns integer
language plpgsql
set search_path = public
as $$
declare
  inserted integer;
  bad record;
begin
  if events is null or jsonb_typeof(events) <> 'array' then
    raise exception 'events must be a JSON array of usage events'
      using errcode = '22023';
  end if;
  if jsonb_array_length(events) = 0 then
    return 0;
  end if;
  if jsonb_array_length(events) > 10000 then
    raise exception 'at most 10000 events per call (got %)', jsonb_array_length(events)
      using errcode = '22023';
  end if;
  if exists (select 1 from jsonb_array_elements(events) e where jsonb_typeof(e) <> 'object') then
    raise exception 'every usage event must be a JSON object' using errcode = '22023';
  end if;

  -- Validate references with messages a caller can act on (the whole call is rejected).
  select e.ord, e.val ->> 'id' as id into bad
  from jsonb_array_elements(events) with ordinality as e(val, ord)
  where coalesce(e.val ->> 'id', '') = '' or coalesce(e.val ->> 'workflow_thread_id', '') = ''
     or coalesce(e.val ->> 'api_key_id', '') = ''
  limit 1;
  if found then
    raise exception 'usage event #% is missing id, workflow_thread_id or api_key_id', bad.ord
      using errcode = '22023';
  end if;

  select e.val ->> 'id' as id, e.val ->> 'workflow_thread_id' as thread into bad
  from jsonb_array_elements(events) as e(val)
  left join workflow_threads t
    on t.workflow_thread_id = (e.val ->> 'workflow_thread_id')::uuid
  where t.workflow_thread_id is null
     or t.api_key_id <> (e.val ->> 'api_key_id')::uuid
  limit 1;
  if found then
    raise exception 'usage event % refers to unknown workflow_thread_id % (or to another key''s thread)',
      bad.id, bad.thread using errcode = '23503';
  end if;

  -- Lock the threads in a fixed order so concurrent batches never deadlock.
  perform 1 from workflow_threads
  where workflow_thread_id in (
    select distinct (e ->> 'workflow_thread_id')::uuid from jsonb_array_elements(events) e)
  order by workflow_thread_id
  for no key update;

  with incoming as (
    select distinct on (r.id) r.*
    from jsonb_populate_recordset(null::usage_events, events) r
    order by r.id
  ),
  ins as (
    insert into usage_events (
      id, workflow_thread_id, api_key_id, end_user_id, occurred_at, kind, category,
      provider, model, processor, input_tokens, output_tokens, cache_read_tokens,
      cache_write_tokens, reasoning_tokens, input_audio_tokens, output_audio_tokens,
      cache_read_audio_tokens, characters, audio_seconds, cost_usd,
      input_cost_usd, output_cost_usd, price_source, latency_ms, status_code, is_error,
      cache_hit, estimated)
    select
      id, workflow_thread_id, api_key_id, end_user_id, coalesce(occurred_at, now()), kind,
      coalesce(category, 'bot'), provider, model, processor,
      coalesce(input_tokens, 0), coalesce(output_tokens, 0), coalesce(cache_read_tokens, 0),
      coalesce(cache_write_tokens, 0), coalesce(reasoning_tokens, 0),
      coalesce(input_audio_tokens, 0), coalesce(output_audio_tokens, 0),
      coalesce(cache_read_audio_tokens, 0),
      coalesce(characters, 0), coalesce(audio_seconds, 0),
      -- The total is derived from the split whenever the split is given.
      case when input_cost_usd is not null and output_cost_usd is not null
           then input_cost_usd + output_cost_usd else cost_usd end,
      input_cost_usd, output_cost_usd, price_source, latency_ms, status_code,
      coalesce(is_error, false), coalesce(cache_hit, false), coalesce(estimated, false)
    from incoming
    on conflict (id) do nothing
    returning *
  ),
  per_model as (
    select workflow_thread_id, model,
      jsonb_build_object(
        'calls', count(*),
        'input_tokens', sum(input_tokens),
        'output_tokens', sum(output_tokens),
        'input_audio_tokens', sum(input_audio_tokens),
        'output_audio_tokens', sum(output_audio_tokens),
        'cache_read_audio_tokens', sum(cache_read_audio_tokens),
        'characters', sum(characters),
        'audio_seconds', sum(audio_seconds),
        'cost_usd', coalesce(sum(cost_usd), 0)) as totals
    from ins
    group by workflow_thread_id, model
  ),
  per_thread as (
    select i.workflow_thread_id,
      jsonb_build_object(
        'events', count(*),
        'llm_calls', count(*) filter (where kind = 'llm'),
        'input_tokens', sum(input_tokens),
        'output_tokens', sum(output_tokens),
        'total_tokens', sum(input_tokens + output_tokens),
        'cache_read_tokens', sum(cache_read_tokens),
        'input_audio_tokens', sum(input_audio_tokens),
        'output_audio_tokens', sum(output_audio_tokens),
        'cache_read_audio_tokens', sum(cache_read_audio_tokens),
        'tts_characters', sum(characters) filter (where kind = 'tts'),
        'stt_seconds', sum(audio_seconds) filter (where kind = 'stt'),
        'telephony_seconds', sum(audio_seconds) filter (where kind = 'telephony'),
        'total_cost_usd', coalesce(sum(cost_usd), 0),
        'bot_cost_usd', coalesce(sum(cost_usd) filter (where category = 'bot'), 0),
        'insights_cost_usd', coalesce(sum(cost_usd) filter (where category = 'insights'), 0),
        'unpriced_events', count(*) filter (where cost_usd is null),
        'estimated_events', count(*) filter (where estimated)) as delta
    from ins i
    group by i.workflow_thread_id
  ),
  merged as (
    select p.workflow_thread_id, jsonb_strip_nulls(p.delta) as delta,
      (select jsonb_object_agg(m.model, m.totals) from per_model m
        where m.workflow_thread_id = p.workflow_thread_id) as models
    from per_thread p
  ),
  upd as (
    update workflow_threads t
    set usage_stats = usage_stats_add(t.usage_stats, m.delta, m.models)
    from merged m
    where t.workflow_thread_id = m.workflow_thread_id
    returning 1
  )
  -- Data-modifying CTEs always run to completion, so upd is applied with ins.
  select count(*) into inserted from ins;

  return inserted;
end
$$;

create or replace function public.usage_rollup_call_apply() returns trigger
language plpgsql
set search_path = public
as $$
begin
  insert into usage_rollup_call_hourly as r (
    api_key_id, bucket_hour, workflow_thread_id, end_user_id, events, llm_calls,
    input_tokens, output_tokens, cache_read_tokens, input_audio_tokens, output_audio_tokens,
    cache_read_audio_tokens, tts_characters, stt_seconds, telephony_seconds, cost_usd,
    unpriced_events, llm_latency_ms_sum, llm_latency_events, error_events)
  select
    n.api_key_id, date_trunc('hour', n.occurred_at, 'UTC'), n.workflow_thread_id,
    n.end_user_id, count(*), count(*) filter (where n.kind = 'llm'),
    sum(n.input_tokens), sum(n.output_tokens), sum(n.cache_read_tokens),
    sum(n.input_audio_tokens), sum(n.output_audio_tokens), sum(n.cache_read_audio_tokens),
    coalesce(sum(n.characters) filter (where n.kind = 'tts'), 0),
    coalesce(sum(n.audio_seconds) filter (where n.kind = 'stt'), 0),
    coalesce(sum(n.audio_seconds) filter (where n.kind = 'telephony'), 0),
    coalesce(sum(n.cost_usd), 0), count(*) filter (where n.cost_usd is null),
    coalesce(sum(n.latency_ms) filter (where n.kind = 'llm'), 0),
    count(n.latency_ms) filter (where n.kind = 'llm'),
    count(*) filter (where n.is_error)
  from new_rows n
  group by 1, 2, 3, 4
  -- A fixed order of row locks, so concurrent batches cannot deadlock.
  order by 1, 2, 3, 4
  on conflict (api_key_id, bucket_hour, workflow_thread_id, end_user_id)
  do update set
    events = r.events + excluded.events,
    llm_calls = r.llm_calls + excluded.llm_calls,
    input_tokens = r.input_tokens + excluded.input_tokens,
    output_tokens = r.output_tokens + excluded.output_tokens,
    cache_read_tokens = r.cache_read_tokens + excluded.cache_read_tokens,
    input_audio_tokens = r.input_audio_tokens + excluded.input_audio_tokens,
    output_audio_tokens = r.output_audio_tokens + excluded.output_audio_tokens,
    cache_read_audio_tokens = r.cache_read_audio_tokens + excluded.cache_read_audio_tokens,
    tts_characters = r.tts_characters + excluded.tts_characters,
    stt_seconds = r.stt_seconds + excluded.stt_seconds,
    telephony_seconds = r.telephony_seconds + excluded.telephony_seconds,
    cost_usd = r.cost_usd + excluded.cost_usd,
    unpriced_events = r.unpriced_events + excluded.unpriced_events,
    llm_latency_ms_sum = r.llm_latency_ms_sum + excluded.llm_latency_ms_sum,
    llm_latency_events = r.llm_latency_events + excluded.llm_latency_events,
    error_events = r.error_events + excluded.error_events;
  return null;
end
$$;

create or replace function public.usage_report(
  p_api_key_id uuid,
  p_start timestamptz,
  p_end timestamptz,
  p_group_by text default null
) returns jsonb
language plpgsql
stable
set search_path = public
set work_mem = '64MB'
as $$
declare
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
  per_call boolean := p_group_by is null or p_group_by in ('day', 'end_user');
  result jsonb;
begin
  if p_api_key_id is null or p_start is null or p_end is null then
    raise exception 'p_api_key_id, p_start and p_end are required' using errcode = '22023';
  end if;
  if p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if p_group_by is not null and p_group_by not in ('day', 'model', 'category', 'kind', 'end_user') then
    raise exception 'group_by must be one of day, model, category, kind, end_user (got %)',
      p_group_by using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;

  -- Reports that do not split a call by kind, category or model read the per-call
  -- rollup (about a quarter of the rows); the others the finer one. A branch whose
  -- one-time filter is false is never executed.
  with parts as materialized (
    select
      case when p_group_by = 'end_user' then c.end_user_id end as key_text,
      case when p_group_by = 'day' then date_trunc('day', c.bucket_hour, 'UTC') end as key_day,
      c.workflow_thread_id, c.end_user_id, c.events, c.llm_calls, c.input_tokens,
      c.output_tokens, c.cache_read_tokens, c.input_audio_tokens, c.output_audio_tokens,
      c.cache_read_audio_tokens, c.tts_characters, c.stt_seconds, c.telephony_seconds,
      c.cost_usd,
      c.unpriced_events, c.llm_latency_ms_sum, c.llm_latency_events, c.error_events
    from usage_rollup_call_hourly c
    where per_call
      and c.api_key_id = p_api_key_id
      and c.bucket_hour >= whole_start and c.bucket_hour < whole_end
    union all
    select
      case p_group_by
        when 'model' then r.model when 'category' then r.category when 'kind' then r.kind
      end,
      null::timestamptz,
      r.workflow_thread_id, r.end_user_id, r.events,
      case when r.kind = 'llm' then r.events else 0 end, r.input_tokens, r.output_tokens,
      r.cache_read_tokens, r.input_audio_tokens, r.output_audio_tokens,
      r.cache_read_audio_tokens, case when r.kind = 'tts' then r.characters else 0 end,
      case when r.kind = 'stt' then r.audio_seconds else 0 end,
      case when r.kind = 'telephony' then r.audio_seconds else 0 end, r.cost_usd,
      r.unpriced_events, case when r.kind = 'llm' then r.latency_ms_sum else 0 end,
      case when r.kind = 'llm' then r.latency_events else 0 end, r.error_events
    from usage_rollup_hourly r
    where not per_call
      and r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select
      case p_group_by
        when 'model' then e.model when 'category' then e.category when 'kind' then e.kind
        when 'end_user' then e.end_user_id
      end,
      case when p_group_by = 'day' then date_trunc('day', e.occurred_at, 'UTC') end,
      e.workflow_thread_id, e.end_user_id, 1, (e.kind = 'llm')::int, e.input_tokens,
      e.output_tokens, e.cache_read_tokens, e.input_audio_tokens, e.output_audio_tokens,
      e.cache_read_audio_tokens,
      case when e.kind = 'tts' then e.characters else 0 end,
      case when e.kind = 'stt' then e.audio_seconds else 0 end,
      case when e.kind = 'telephony' then e.audio_seconds else 0 end, coalesce(e.cost_usd, 0),
      (e.cost_usd is null)::int,
      case when e.kind = 'llm' then coalesce(e.latency_ms, 0) else 0 end,
      (e.kind = 'llm' and e.latency_ms is not null)::int, e.is_error::int
    from usage_events e
    where e.api_key_id = p_api_key_id
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ),
  sums as (
    select key_text, key_day,
      sum(events) as events,
      sum(llm_calls) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens,
      sum(input_audio_tokens) as input_audio_tokens,
      sum(output_audio_tokens) as output_audio_tokens,
      sum(cache_read_audio_tokens) as cache_read_audio_tokens,
      sum(tts_characters) as tts_characters,
      sum(stt_seconds) as stt_seconds,
      sum(telephony_seconds) as telephony_seconds,
      sum(cost_usd) as cost_usd,
      coalesce(sum(cost_usd) filter (where end_user_id is not null), 0) as end_user_cost_usd,
      sum(unpriced_events) as unpriced_events,
      sum(llm_latency_ms_sum) as llm_latency_ms_sum,
      sum(llm_latency_events) as llm_latency_events,
      sum(error_events) as error_events
    from parts
    group by key_text, key_day
  ),
  calls as (
    select key_text, key_day, count(*) as calls
    from (select distinct key_text, key_day, workflow_thread_id from parts) d
    group by key_text, key_day
  ),
  users as (
    select key_text, key_day, count(*) as end_users
    from (select distinct key_text, key_day, end_user_id from parts
          where end_user_id is not null) d
    group by key_text, key_day
  ),
  group_rows as (
    select false as is_total, s.key_text, s.key_day, s.events, s.llm_calls, s.input_tokens,
      s.output_tokens, s.cached_tokens, s.input_audio_tokens, s.output_audio_tokens,
      s.cache_read_audio_tokens, s.tts_characters, s.stt_seconds, s.telephony_seconds,
      s.cost_usd,
      s.end_user_cost_usd, s.unpriced_events, s.llm_latency_ms_sum, s.llm_latency_events,
      s.error_events, coalesce(c.calls, 0) as calls, coalesce(u.end_users, 0) as end_users
    from sums s
    left join calls c
      on c.key_text is not distinct from s.key_text and c.key_day is not distinct from s.key_day
    left join users u
      on u.key_text is not distinct from s.key_text and u.key_day is not distinct from s.key_day
    where p_group_by is not null
  ),
  total_row as (
    select true as is_total, null::text, null::timestamptz,
      coalesce(sum(s.events), 0), coalesce(sum(s.llm_calls), 0),
      coalesce(sum(s.input_tokens), 0), coalesce(sum(s.output_tokens), 0),
      coalesce(sum(s.cached_tokens), 0), coalesce(sum(s.input_audio_tokens), 0),
      coalesce(sum(s.output_audio_tokens), 0), coalesce(sum(s.cache_read_audio_tokens), 0),
      coalesce(sum(s.tts_characters), 0),
      coalesce(sum(s.stt_seconds), 0), coalesce(sum(s.telephony_seconds), 0),
      coalesce(sum(s.cost_usd), 0),
      coalesce(sum(s.end_user_cost_usd), 0), coalesce(sum(s.unpriced_events), 0),
      coalesce(sum(s.llm_latency_ms_sum), 0), coalesce(sum(s.llm_latency_events), 0),
      coalesce(sum(s.error_events), 0),
      (select count(*) from (select distinct workflow_thread_id from parts) d),
      (select count(*) from (select distinct end_user_id from parts
                             where end_user_id is not null) d)
    from sums s
  ),
  figures as (
    select r.is_total,
      coalesce(r.key_text, to_char(r.key_day at time zone 'UTC', 'YYYY-MM-DD')) as group_key,
      jsonb_build_object(
        'calls', r.calls,
        'end_users', r.end_users,
        'events', r.events,
        'llm_calls', r.llm_calls,
        'input_tokens', r.input_tokens,
        'output_tokens', r.output_tokens,
        'cached_tokens', r.cached_tokens,
        'input_audio_tokens', r.input_audio_tokens,
        'output_audio_tokens', r.output_audio_tokens,
        'cache_read_audio_tokens', r.cache_read_audio_tokens,
        'tts_characters', r.tts_characters,
        'stt_seconds', r.stt_seconds::text,
        'telephony_seconds', r.telephony_seconds::text,
        'cost_usd', r.cost_usd::text,
        'unpriced_events', r.unpriced_events,
        'avg_cost_per_call_usd', round(r.cost_usd / nullif(r.calls, 0), 10)::text,
        'avg_cost_per_end_user_usd',
          round(r.end_user_cost_usd / nullif(r.end_users, 0), 10)::text,
        'avg_llm_latency_ms',
          round(r.llm_latency_ms_sum / nullif(r.llm_latency_events, 0), 1)::text,
        'error_events', r.error_events,
        'error_rate', round(r.error_events::numeric / nullif(r.events, 0), 4)::text
      ) as figures
    from (select * from group_rows union all select * from total_row) r
  )
  select jsonb_build_object(
    'totals', (select f.figures from figures f where f.is_total),
    'groups', coalesce(
      (select jsonb_agg(jsonb_build_object('key', f.group_key) || f.figures
                        order by f.group_key nulls last)
       from figures f where not f.is_total), '[]'::jsonb))
  into result;
  return result;
end
$$;

create or replace function public.dashboard_summary(
  p_api_key_id uuid, p_start timestamptz, p_end timestamptz, p_top integer default 10)
returns jsonb
language plpgsql
stable
set search_path = public
set work_mem = '64MB'
as $$
declare
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
  result jsonb;
begin
  if p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;

  with parts as materialized (
    select (r.bucket_hour at time zone 'UTC')::date as day, r.workflow_thread_id,
      r.end_user_id, r.kind, r.category, r.model, r.events,
      r.input_tokens + r.output_tokens as tokens, r.input_audio_tokens,
      r.output_audio_tokens, r.cache_read_audio_tokens, r.characters, r.audio_seconds,
      r.cost_usd, r.unpriced_events, r.error_events
    from usage_rollup_hourly r
    where r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select (e.occurred_at at time zone 'UTC')::date, e.workflow_thread_id, e.end_user_id,
      e.kind, e.category, e.model, 1, e.input_tokens + e.output_tokens,
      e.input_audio_tokens, e.output_audio_tokens, e.cache_read_audio_tokens, e.characters,
      e.audio_seconds, coalesce(e.cost_usd, 0), (e.cost_usd is null)::int, e.is_error::int
    from usage_events e
    where e.api_key_id = p_api_key_id
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ),
  totals as (
    select
      (select count(*) from (select workflow_thread_id from parts group by 1) d) as calls,
      (select count(*) from (select end_user_id from parts where end_user_id is not null
                             group by 1) d) as end_users,
      coalesce(sum(events) filter (where kind = 'llm'), 0) as llm_calls,
      coalesce(sum(cost_usd), 0) as cost_usd,
      coalesce(sum(tokens), 0) as tokens,
      coalesce(sum(input_audio_tokens), 0) as input_audio_tokens,
      coalesce(sum(output_audio_tokens), 0) as output_audio_tokens,
      coalesce(sum(cache_read_audio_tokens), 0) as cache_read_audio_tokens,
      coalesce(sum(characters), 0) as tts_characters,
      coalesce(sum(audio_seconds) filter (where kind = 'stt'), 0) as stt_seconds,
      coalesce(sum(audio_seconds) filter (where kind = 'telephony'), 0) as telephony_seconds,
      coalesce(sum(unpriced_events), 0) as unpriced_events,
      coalesce(sum(error_events), 0) as errors,
      coalesce(sum(events), 0) as events
    from parts
  ),
  latency as (
    select count(*) as sample,
      percentile_cont(0.5) within group (order by latency_ms) as p50,
      percentile_cont(0.95) within group (order by latency_ms) as p95
    from (
      select e.latency_ms from usage_events e
      where e.api_key_id = p_api_key_id and e.occurred_at >= p_start
        and e.occurred_at < p_end and e.kind = 'llm' and e.latency_ms is not null
      order by e.occurred_at desc
      limit 10000
    ) recent
  ),
  per_call as (
    select workflow_thread_id, sum(cost_usd) as cost_usd, sum(tokens) as tokens
    from parts group by workflow_thread_id
    order by 2 desc, 1
    limit p_top
  )
  select jsonb_build_object(
    'start', p_start,
    'end', p_end,
    'totals', (
      select jsonb_build_object(
        'calls', t.calls,
        'end_users', t.end_users,
        'llm_calls', t.llm_calls,
        'events', t.events,
        'cost_usd', t.cost_usd::text,
        'tokens', t.tokens,
        'input_audio_tokens', t.input_audio_tokens,
        'output_audio_tokens', t.output_audio_tokens,
        'cache_read_audio_tokens', t.cache_read_audio_tokens,
        'tts_characters', t.tts_characters,
        'stt_seconds', t.stt_seconds::text,
        'telephony_seconds', t.telephony_seconds::text,
        'unpriced_events', t.unpriced_events,
        'avg_cost_per_call_usd',
          case when t.calls > 0 then round(t.cost_usd / t.calls, 10)::text end,
        'avg_cost_per_end_user_usd',
          case when t.end_users > 0 then round(t.cost_usd / t.end_users, 10)::text end,
        'error_rate', case when t.events > 0 then round(t.errors::numeric / t.events, 4)::text end,
        'llm_latency_p50_ms', round(l.p50::numeric, 1)::text,
        'llm_latency_p95_ms', round(l.p95::numeric, 1)::text,
        'latency_sample', l.sample)
      from totals t, latency l),
    'cost_by_day_model', coalesce((
      select jsonb_agg(jsonb_build_object('day', day, 'model', model, 'cost_usd', cost::text)
                       order by day, model)
      from (select day, model, sum(cost_usd) as cost from parts group by 1, 2) x), '[]'::jsonb),
    'volume_by_day', coalesce((
      select jsonb_agg(jsonb_build_object(
               'day', day, 'tokens', tokens, 'tts_characters', chars, 'stt_seconds', secs::text,
               'telephony_seconds', phone_secs::text)
             order by day)
      from (select day, sum(tokens) as tokens, sum(characters) as chars,
                   coalesce(sum(audio_seconds) filter (where kind = 'stt'), 0) as secs,
                   coalesce(sum(audio_seconds) filter (where kind = 'telephony'), 0) as phone_secs
            from parts group by 1) x), '[]'::jsonb),
    'cost_by_category', coalesce((
      select jsonb_object_agg(category, cost::text)
      from (select category, sum(cost_usd) as cost from parts group by 1) x), '{}'::jsonb),
    'top_calls', coalesce((
      select jsonb_agg(jsonb_build_object(
               'workflow_thread_id', c.workflow_thread_id, 'cost_usd', c.cost_usd::text,
               'tokens', c.tokens, 'status', t.status, 'end_user_id', t.end_user_id,
               'created_at', t.created_at)
             order by c.cost_usd desc, c.workflow_thread_id)
      from per_call c
      join workflow_threads t on t.workflow_thread_id = c.workflow_thread_id), '[]'::jsonb)
  ) into result;
  return result;
end
$$;

revoke execute on function public.record_usage_events(jsonb) from public, anon, authenticated;
grant execute on function public.record_usage_events(jsonb) to service_role;
revoke execute on function public.usage_rollup_call_apply() from public, anon, authenticated;
revoke execute on function public.usage_report(uuid, timestamptz, timestamptz, text)
  from public, anon, authenticated;
grant execute on function public.usage_report(uuid, timestamptz, timestamptz, text) to service_role;
revoke execute on function public.dashboard_summary(uuid, timestamptz, timestamptz, integer)
  from public, anon, authenticated;
grant execute on function public.dashboard_summary(uuid, timestamptz, timestamptz, integer)
  to service_role;
