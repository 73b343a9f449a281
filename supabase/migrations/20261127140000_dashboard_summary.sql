-- The usage dashboard's figures for one key over a period, computed in SQL over the
-- ledger (index usage_events_key_time_idx). Money and seconds are returned as text so
-- that clients keep them exact.

create or replace function public.dashboard_summary(
  p_api_key_id uuid, p_start timestamptz, p_end timestamptz, p_top integer default 10)
returns jsonb
language sql
stable
set search_path = public
as $$
  with ev as (
    select * from usage_events
    where api_key_id = p_api_key_id and occurred_at >= p_start and occurred_at < p_end
  ),
  per_call as (
    select workflow_thread_id, coalesce(sum(cost_usd), 0) as cost_usd,
      sum(input_tokens + output_tokens) as tokens
    from ev group by workflow_thread_id
  ),
  latency as (
    select
      percentile_cont(0.5) within group (order by latency_ms) as p50,
      percentile_cont(0.95) within group (order by latency_ms) as p95
    from ev where kind = 'llm' and latency_ms is not null
  ),
  totals as (
    select
      count(distinct workflow_thread_id) as calls,
      count(distinct end_user_id) as end_users,
      count(*) filter (where kind = 'llm') as llm_calls,
      coalesce(sum(cost_usd), 0) as cost_usd,
      coalesce(sum(input_tokens + output_tokens), 0) as tokens,
      coalesce(sum(characters), 0) as tts_characters,
      coalesce(sum(audio_seconds), 0) as stt_seconds,
      count(*) filter (where cost_usd is null) as unpriced_events,
      count(*) filter (where is_error) as errors,
      count(*) as events
    from ev
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
        'llm_latency_p95_ms', round(l.p95::numeric, 1)::text)
      from totals t, latency l),
    'cost_by_day_model', coalesce((
      select jsonb_agg(jsonb_build_object('day', d, 'model', model, 'cost_usd', cost::text)
                       order by d, model)
      from (select date_trunc('day', occurred_at, 'UTC')::date as d, model,
                   coalesce(sum(cost_usd), 0) as cost
            from ev group by 1, 2) x), '[]'::jsonb),
    'volume_by_day', coalesce((
      select jsonb_agg(jsonb_build_object(
               'day', d, 'tokens', tokens, 'tts_characters', chars, 'stt_seconds', secs::text)
             order by d)
      from (select date_trunc('day', occurred_at, 'UTC')::date as d,
                   sum(input_tokens + output_tokens) as tokens,
                   sum(characters) as chars, sum(audio_seconds) as secs
            from ev group by 1) x), '[]'::jsonb),
    'cost_by_category', coalesce((
      select jsonb_object_agg(category, cost::text)
      from (select category, coalesce(sum(cost_usd), 0) as cost from ev group by 1) x),
      '{}'::jsonb),
    'top_calls', coalesce((
      select jsonb_agg(jsonb_build_object(
               'workflow_thread_id', c.workflow_thread_id, 'cost_usd', c.cost_usd::text,
               'tokens', c.tokens, 'status', t.status, 'end_user_id', t.end_user_id,
               'created_at', t.created_at)
             order by c.cost_usd desc, c.workflow_thread_id)
      from (select * from per_call order by cost_usd desc, workflow_thread_id limit p_top) c
      join workflow_threads t on t.workflow_thread_id = c.workflow_thread_id), '[]'::jsonb)
  );
$$;

revoke execute on function public.dashboard_summary(uuid, timestamptz, timestamptz, integer)
  from public, anon, authenticated;
grant execute on function public.dashboard_summary(uuid, timestamptz, timestamptz, integer)
  to service_role;
