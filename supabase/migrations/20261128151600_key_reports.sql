-- Reports over many keys at once: the operator's console (every key's usage, sorted by
-- cost, with its cost split by kind) and the billing CSV (one row per key, or per key
-- and UTC day or month).
--
-- Both read whole UTC hours from the rollups and the partial hours at either end from
-- the ledger, as usage_report does, so any range is exact. Keys are passed as an array
-- (a page of them: the CSV export pages through the keys so that no answer grows with
-- the ledger); null means every key.
--
-- usage_key_figures: per key (and period) calls, end users, events, LLM calls, tokens,
-- TTS characters, STT seconds, phone call seconds (telephony_seconds), cost, unpriced
-- and error events, and call_seconds: the summed duration (bot start to end, or to now
-- while running) of the calls counted. Money and seconds are text, so clients keep
-- every digit.
--
-- usage_keys_report: the operator's report of every key, from the two above, as JSON,
-- each key with its budget as it stands (budget_state; null without one).
--
-- usage_cost_by_kind: per key and kind (llm, tts, stt, telephony, and any kind later
-- added), the events and their cost, from the dimensions rollup
-- (usage_rollup_dims_hourly).
--
-- budget_states: every budgeted key's budget_state, by key id, in one statement.

create or replace function public.usage_key_figures(
  p_key_ids uuid[],
  p_start timestamptz,
  p_end timestamptz,
  p_period text default null
)
returns table (
  api_key_id uuid,
  period_start timestamptz,
  period_end timestamptz,
  calls bigint,
  end_users bigint,
  events bigint,
  llm_calls bigint,
  input_tokens bigint,
  output_tokens bigint,
  cached_tokens bigint,
  tts_characters bigint,
  stt_seconds text,
  telephony_seconds text,
  cost_usd text,
  unpriced_events bigint,
  error_events bigint,
  call_seconds text
)
language plpgsql
stable
set search_path = public
set work_mem = '64MB'
as $$
#variable_conflict use_column
declare
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
  step interval := case p_period when 'day' then interval '1 day' when 'month' then interval '1 month' end;
begin
  if p_start is null or p_end is null or p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if p_period is not null and p_period not in ('day', 'month') then
    raise exception 'period must be day or month (got %)', p_period using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;

  -- Dynamic SQL, so that a page of keys gets the plan that walks the keys' indexes and
  -- every key the plan that reads the rollups whole; the ledger's partial hours are
  -- always read key by key, through its (api_key_id, occurred_at) index.
  return query execute format($q$
  with parts as materialized (
    select c.api_key_id as key_id,
      case when $3 is null then $1
           else date_trunc($3, c.bucket_hour, 'UTC') end as bucket,
      c.workflow_thread_id, c.end_user_id, c.events, c.llm_calls, c.input_tokens,
      c.output_tokens, c.cache_read_tokens, c.tts_characters, c.stt_seconds,
      c.telephony_seconds, c.cost_usd, c.unpriced_events, c.error_events
    from usage_rollup_call_hourly c
    where %1$s
      and c.bucket_hour >= $4 and c.bucket_hour < $5
    union all
    select e.api_key_id,
      case when $3 is null then $1
           else date_trunc($3, e.occurred_at, 'UTC') end,
      e.workflow_thread_id, e.end_user_id, 1, (e.kind = 'llm')::int, e.input_tokens,
      e.output_tokens, e.cache_read_tokens,
      case when e.kind = 'tts' then e.characters else 0 end,
      case when e.kind = 'stt' then e.audio_seconds else 0 end,
      case when e.kind = 'telephony' then e.audio_seconds else 0 end, coalesce(e.cost_usd, 0),
      (e.cost_usd is null)::int, e.is_error::int
    from usage_events e
    where %2$s
      and ((e.occurred_at >= $1 and e.occurred_at < $4)
        or (e.occurred_at >= $5 and e.occurred_at < $2))
  ),
  sums as (
    select key_id, bucket, sum(events) as events, sum(llm_calls) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens, sum(tts_characters) as tts_characters,
      sum(stt_seconds) as stt_seconds, sum(telephony_seconds) as telephony_seconds,
      sum(cost_usd) as cost_usd,
      sum(unpriced_events) as unpriced_events, sum(error_events) as error_events
    from parts group by key_id, bucket
  ),
  call_set as (
    select distinct key_id, bucket, workflow_thread_id from parts
  ),
  per_calls as (
    select s.key_id, s.bucket, count(*) as calls,
      coalesce(sum(extract(epoch from coalesce(t.bot_ended_at, now()) - t.bot_started_at))
               filter (where t.bot_started_at is not null), 0) as call_seconds
    from call_set s
    join workflow_threads t on t.workflow_thread_id = s.workflow_thread_id
    group by s.key_id, s.bucket
  ),
  users as (
    select key_id, bucket, count(distinct end_user_id) as end_users
    from parts where end_user_id is not null group by key_id, bucket
  )
  select s.key_id,
    greatest(s.bucket, $1),
    case when $3 is null then $2 else least(s.bucket + $6, $2) end,
    coalesce(c.calls, 0), coalesce(u.end_users, 0), s.events::bigint, s.llm_calls::bigint,
    s.input_tokens::bigint, s.output_tokens::bigint, s.cached_tokens::bigint,
    s.tts_characters::bigint, s.stt_seconds::text, s.telephony_seconds::text,
    s.cost_usd::text,
    s.unpriced_events::bigint, s.error_events::bigint,
    round(coalesce(c.call_seconds, 0), 3)::text
  from sums s
  left join per_calls c on c.key_id = s.key_id and c.bucket = s.bucket
  left join users u on u.key_id = s.key_id and u.bucket = s.bucket
  order by s.key_id, s.bucket;
  $q$,
    case when p_key_ids is null then 'true' else 'c.api_key_id = any ($7)' end,
    'e.api_key_id = any ($7)')
  using p_start, p_end, p_period, whole_start, whole_end, step,
    coalesce(p_key_ids, array(select k.id from api_keys k));
end
$$;

create or replace function public.usage_cost_by_kind(
  p_key_ids uuid[],
  p_start timestamptz,
  p_end timestamptz
)
returns table (api_key_id uuid, kind text, events bigint, cost_usd text)
language plpgsql
stable
set search_path = public
as $$
#variable_conflict use_column
declare
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
begin
  if p_start is null or p_end is null or p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;
  return query execute format($q$
  select x.key_id, x.kind, sum(x.events)::bigint, sum(x.cost_usd)::text
  from (
    select r.api_key_id as key_id, r.kind, r.events, r.cost_usd
    from usage_rollup_dims_hourly r
    where %1$s
      and r.bucket_hour >= $3 and r.bucket_hour < $4
    union all
    select e.api_key_id, e.kind, 1, coalesce(e.cost_usd, 0)
    from usage_events e
    where %2$s
      and ((e.occurred_at >= $1 and e.occurred_at < $3)
        or (e.occurred_at >= $4 and e.occurred_at < $2))
  ) x
  group by x.key_id, x.kind
  order by x.key_id, x.kind;
  $q$,
    case when p_key_ids is null then 'true' else 'r.api_key_id = any ($5)' end,
    'e.api_key_id = any ($5)')
  using p_start, p_end, whole_start, whole_end, coalesce(p_key_ids, array(select k.id from api_keys k));
end
$$;

revoke execute on function public.usage_key_figures(uuid[], timestamptz, timestamptz, text)
  from public, anon, authenticated;
grant execute on function public.usage_key_figures(uuid[], timestamptz, timestamptz, text)
  to service_role;
revoke execute on function public.usage_cost_by_kind(uuid[], timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function public.usage_cost_by_kind(uuid[], timestamptz, timestamptz)
  to service_role;

create or replace function public.budget_states()
returns jsonb
language sql
stable
set search_path = public
as $$
  select coalesce(jsonb_object_agg(b.api_key_id, budget_state(b.api_key_id)), '{}'::jsonb)
  from api_key_budgets b;
$$;

revoke execute on function public.budget_states() from public, anon, authenticated;
grant execute on function public.budget_states() to service_role;

-- The operator's report: every key over [p_start, p_end), costliest first (then by
-- name), keys without usage with zeros, their budgets, and the totals; built here in
-- one statement so the API passes it on as it is. Money, seconds and minutes are text.
create or replace function public.usage_keys_report(p_start timestamptz, p_end timestamptz)
returns jsonb
language sql
stable
set search_path = public
as $$
  with figures as (
    select * from usage_key_figures(null, p_start, p_end, null)
  ),
  kind_rows as materialized (
    select * from usage_cost_by_kind(null, p_start, p_end)
  ),
  kinds as (
    select k.api_key_id, jsonb_object_agg(k.kind, k.cost_usd) as cost_by_kind
    from kind_rows k
    group by k.api_key_id
  ),
  per_key as (
    select a.id, a.name, a.owner, coalesce(a.key_prefix, a.unkey_key_id) as key,
      a.is_active, a.stripe_customer_id,
      coalesce(f.calls, 0) as calls, coalesce(f.end_users, 0) as end_users,
      coalesce(f.events, 0) as events, coalesce(f.llm_calls, 0) as llm_calls,
      coalesce(f.input_tokens, 0) as input_tokens,
      coalesce(f.output_tokens, 0) as output_tokens,
      coalesce(f.cached_tokens, 0) as cached_tokens,
      coalesce(f.tts_characters, 0) as tts_characters,
      coalesce(f.stt_seconds::numeric, 0) as stt_seconds,
      coalesce(f.telephony_seconds::numeric, 0) as telephony_seconds,
      coalesce(f.cost_usd::numeric, 0) as cost_usd,
      coalesce(f.unpriced_events, 0) as unpriced_events,
      coalesce(f.error_events, 0) as error_events,
      coalesce(f.call_seconds::numeric, 0) as call_seconds,
      coalesce(k.cost_by_kind, '{}'::jsonb) as cost_by_kind,
      b.state -> a.id::text as budget
    from api_keys a
    left join figures f on f.api_key_id = a.id
    left join kinds k on k.api_key_id = a.id
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
      (select coalesce(jsonb_object_agg(kind, cost::text), '{}'::jsonb)
       from (select kind, sum(cost_usd::numeric) as cost
             from kind_rows group by kind) x) as cost_by_kind
    from per_key
  )
  select jsonb_build_object(
    'totals', (
      select jsonb_build_object(
        'calls', t.calls, 'minutes', round(t.call_seconds / 60, 3)::text,
        'call_seconds', t.call_seconds::text, 'end_users', t.end_users, 'events', t.events,
        'llm_calls', t.llm_calls, 'input_tokens', t.input_tokens,
        'output_tokens', t.output_tokens, 'cached_tokens', t.cached_tokens,
        'tts_characters', t.tts_characters, 'stt_seconds', t.stt_seconds::text,
        'telephony_seconds', t.telephony_seconds::text, 'cost_usd', t.cost_usd::text, 'cost_by_kind', t.cost_by_kind,
        'unpriced_events', t.unpriced_events, 'error_events', t.error_events)
      from totals t),
    'keys', coalesce((
      select jsonb_agg(jsonb_build_object(
          'api_key_id', p.id, 'name', p.name, 'owner', p.owner, 'key', p.key,
          'is_active', p.is_active, 'stripe_customer_id', p.stripe_customer_id,
          'calls', p.calls, 'minutes', round(p.call_seconds / 60, 3)::text,
          'call_seconds', p.call_seconds::text, 'end_users', p.end_users,
          'events', p.events, 'llm_calls', p.llm_calls, 'input_tokens', p.input_tokens,
          'output_tokens', p.output_tokens, 'cached_tokens', p.cached_tokens,
          'tts_characters', p.tts_characters, 'stt_seconds', p.stt_seconds::text,
          'telephony_seconds', p.telephony_seconds::text,
          'cost_usd', p.cost_usd::text, 'cost_by_kind', p.cost_by_kind,
          'unpriced_events', p.unpriced_events, 'error_events', p.error_events,
          'budget', p.budget)
        order by p.cost_usd desc, p.name, p.id)
      from per_key p), '[]'::jsonb));
$$;

revoke execute on function public.usage_keys_report(timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function public.usage_keys_report(timestamptz, timestamptz) to service_role;
