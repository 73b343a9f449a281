-- The usage dashboard's figures for one key over a period, computed in SQL. Every sum
-- comes from the hourly rollup (whole hours) plus the ledger for the partial hours at
-- either end, as usage_report does, so the page stays fast at millions of ledger rows;
-- LLM latency percentiles need single events, so they are taken over the key's most
-- recent 10,000 LLM inferences in the period (an index range scan, not a sort of the
-- whole period), and 'latency_sample' says how many. Money and seconds are text so that
-- clients keep them exact.

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
      r.input_tokens + r.output_tokens as tokens, r.characters, r.audio_seconds,
      r.cost_usd, r.unpriced_events, r.error_events
    from usage_rollup_hourly r
    where r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select (e.occurred_at at time zone 'UTC')::date, e.workflow_thread_id, e.end_user_id,
      e.kind, e.category, e.model, 1, e.input_tokens + e.output_tokens, e.characters,
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
      coalesce(sum(characters), 0) as tts_characters,
      coalesce(sum(audio_seconds), 0) as stt_seconds,
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
        'tts_characters', t.tts_characters,
        'stt_seconds', t.stt_seconds::text,
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
               'day', day, 'tokens', tokens, 'tts_characters', chars, 'stt_seconds', secs::text)
             order by day)
      from (select day, sum(tokens) as tokens, sum(characters) as chars,
                   sum(audio_seconds) as secs
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

revoke execute on function public.dashboard_summary(uuid, timestamptz, timestamptz, integer)
  from public, anon, authenticated;
grant execute on function public.dashboard_summary(uuid, timestamptz, timestamptz, integer)
  to service_role;
