-- The cost of every usage event, split into what its input and its output cost
-- (prompt tokens, TTS characters and STT audio are input; completion tokens are output),
-- so live analytics and exports read the split instead of re-pricing the event.
-- cost_usd stays the total that every report sums: when the split is present the total
-- is derived from it (record_usage_events computes it, a check keeps it so). Rows
-- recorded before the split existed keep their total with a NULL split.

alter table public.usage_events
  add column input_cost_usd numeric(20, 10)
    constraint usage_events_input_cost_usd_nonnegative
      check (input_cost_usd is null or input_cost_usd >= 0),
  add column output_cost_usd numeric(20, 10)
    constraint usage_events_output_cost_usd_nonnegative
      check (output_cost_usd is null or output_cost_usd >= 0),
  add constraint usage_events_cost_split_whole
    check ((input_cost_usd is null) = (output_cost_usd is null)),
  add constraint usage_events_cost_split_sums_to_total
    check (input_cost_usd is null
           or (cost_usd is not null and cost_usd = input_cost_usd + output_cost_usd));

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
      cache_write_tokens, reasoning_tokens, characters, audio_seconds, cost_usd,
      input_cost_usd, output_cost_usd, latency_ms, status_code, is_error, cache_hit,
      estimated)
    select
      id, workflow_thread_id, api_key_id, end_user_id, coalesce(occurred_at, now()), kind,
      coalesce(category, 'bot'), provider, model, processor,
      coalesce(input_tokens, 0), coalesce(output_tokens, 0), coalesce(cache_read_tokens, 0),
      coalesce(cache_write_tokens, 0), coalesce(reasoning_tokens, 0),
      coalesce(characters, 0), coalesce(audio_seconds, 0),
      -- The total is derived from the split whenever the split is given.
      case when input_cost_usd is not null and output_cost_usd is not null
           then input_cost_usd + output_cost_usd else cost_usd end,
      input_cost_usd, output_cost_usd, latency_ms, status_code, coalesce(is_error, false), coalesce(cache_hit, false),
      coalesce(estimated, false)
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
        'tts_characters', sum(characters) filter (where kind = 'tts'),
        'stt_seconds', sum(audio_seconds) filter (where kind = 'stt'),
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

revoke execute on function public.record_usage_events(jsonb) from public, anon, authenticated;
grant execute on function public.record_usage_events(jsonb) to service_role;
