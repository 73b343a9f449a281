-- The operator's report of every key (usage_keys_report), rebuilt to read less: the
-- ledger's partial hours at either end are read once (not once for the figures and
-- again for the cost by kind) and summed per call, end user and kind; each key's sums
-- come from the call rollup (usage_rollup_call_hourly) summed per key before they meet
-- the ledger's; distinct calls and end users from the narrow (key, call) and (key, end
-- user) pairs of both; the cost by kind from the dimensions rollup
-- (usage_rollup_dims_hourly). The answer is the one built over usage_key_figures and
-- usage_cost_by_kind (which the billing CSV still uses), digit for digit.

create or replace function public.usage_keys_report(p_start timestamptz, p_end timestamptz)
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
  if p_start is null or p_end is null or p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;

  -- Dynamic SQL, so that the ledger's partial hours are planned for the range given.
  execute $q$
  with edge as materialized (
    select e.api_key_id as key_id, e.workflow_thread_id, e.end_user_id, e.kind,
      count(*) as events, count(*) filter (where e.kind = 'llm') as llm_calls,
      sum(e.input_tokens) as input_tokens, sum(e.output_tokens) as output_tokens,
      sum(e.cache_read_tokens) as cache_read_tokens,
      sum(case when e.kind = 'tts' then e.characters else 0 end) as tts_characters,
      sum(case when e.kind = 'stt' then e.audio_seconds else 0 end) as stt_seconds,
      sum(case when e.kind = 'telephony' then e.audio_seconds else 0 end) as telephony_seconds,
      sum(coalesce(e.cost_usd, 0)) as cost_usd,
      count(*) filter (where e.cost_usd is null) as unpriced_events,
      count(*) filter (where e.is_error) as error_events
    from usage_events e
    where e.api_key_id = any ($5)
      and ((e.occurred_at >= $1 and e.occurred_at < $3)
        or (e.occurred_at >= $4 and e.occurred_at < $2))
    group by e.api_key_id, e.workflow_thread_id, e.end_user_id, e.kind
  ),
  rollup as not materialized (
    select c.api_key_id as key_id, c.workflow_thread_id, c.end_user_id, c.events,
      c.llm_calls, c.input_tokens, c.output_tokens, c.cache_read_tokens, c.tts_characters,
      c.stt_seconds, c.telephony_seconds, c.cost_usd, c.unpriced_events, c.error_events
    from usage_rollup_call_hourly c
    where c.bucket_hour >= $3 and c.bucket_hour < $4
  ),
  sums as (
    select key_id, sum(events) as events, sum(llm_calls) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens, sum(tts_characters) as tts_characters,
      sum(stt_seconds) as stt_seconds, sum(telephony_seconds) as telephony_seconds,
      sum(cost_usd) as cost_usd,
      sum(unpriced_events) as unpriced_events, sum(error_events) as error_events
    from (
      select key_id, sum(events) as events, sum(llm_calls) as llm_calls,
        sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
        sum(cache_read_tokens) as cache_read_tokens, sum(tts_characters) as tts_characters,
        sum(stt_seconds) as stt_seconds, sum(telephony_seconds) as telephony_seconds,
        sum(cost_usd) as cost_usd,
        sum(unpriced_events) as unpriced_events, sum(error_events) as error_events
      from rollup group by key_id
      union all
      select key_id, sum(events), sum(llm_calls), sum(input_tokens), sum(output_tokens),
        sum(cache_read_tokens), sum(tts_characters), sum(stt_seconds),
        sum(telephony_seconds), sum(cost_usd), sum(unpriced_events), sum(error_events)
      from edge group by key_id
    ) x
    group by key_id
  ),
  per_calls as (
    select s.key_id, count(*) as calls,
      coalesce(sum(extract(epoch from coalesce(t.bot_ended_at, now()) - t.bot_started_at))
               filter (where t.bot_started_at is not null), 0) as call_seconds
    from (
      select key_id, workflow_thread_id from rollup
      union
      select key_id, workflow_thread_id from edge
    ) s
    join workflow_threads t on t.workflow_thread_id = s.workflow_thread_id
    group by s.key_id
  ),
  users as (
    select key_id, count(*) as end_users
    from (
      select key_id, end_user_id from rollup where end_user_id is not null
      union
      select key_id, end_user_id from edge where end_user_id is not null
    ) u
    group by key_id
  ),
  kind_rows as materialized (
    select x.key_id as api_key_id, x.kind, sum(x.cost_usd) as cost_usd
    from (
      select r.api_key_id as key_id, r.kind, r.cost_usd
      from usage_rollup_dims_hourly r
      where r.bucket_hour >= $3 and r.bucket_hour < $4
      union all
      select key_id, kind, cost_usd from edge
    ) x
    group by x.key_id, x.kind
  ),
  kinds as (
    select k.api_key_id, jsonb_object_agg(k.kind, k.cost_usd::text) as cost_by_kind
    from kind_rows k
    group by k.api_key_id
  ),
  per_key as (
    select a.id, a.name, a.owner, coalesce(a.key_prefix, a.unkey_key_id) as key,
      a.is_active, a.stripe_customer_id,
      coalesce(c.calls, 0) as calls, coalesce(u.end_users, 0) as end_users,
      coalesce(s.events, 0)::bigint as events, coalesce(s.llm_calls, 0)::bigint as llm_calls,
      coalesce(s.input_tokens, 0)::bigint as input_tokens,
      coalesce(s.output_tokens, 0)::bigint as output_tokens,
      coalesce(s.cached_tokens, 0)::bigint as cached_tokens,
      coalesce(s.tts_characters, 0)::bigint as tts_characters,
      coalesce(s.stt_seconds, 0) as stt_seconds,
      coalesce(s.telephony_seconds, 0) as telephony_seconds,
      coalesce(s.cost_usd, 0) as cost_usd,
      coalesce(s.unpriced_events, 0)::bigint as unpriced_events,
      coalesce(s.error_events, 0)::bigint as error_events,
      case when s.key_id is null then 0
           else round(coalesce(c.call_seconds, 0), 3) end as call_seconds,
      coalesce(k.cost_by_kind, '{}'::jsonb) as cost_by_kind,
      b.state -> a.id::text as budget
    from api_keys a
    left join sums s on s.key_id = a.id
    left join per_calls c on c.key_id = a.id
    left join users u on u.key_id = a.id
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
       from (select kind, sum(cost_usd) as cost
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
  $q$
  into result
  using p_start, p_end, whole_start, whole_end, array(select k.id from api_keys k);
  return result;
end
$$;

revoke execute on function public.usage_keys_report(timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function public.usage_keys_report(timestamptz, timestamptz) to service_role;
