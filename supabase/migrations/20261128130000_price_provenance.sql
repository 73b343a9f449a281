-- Price provenance and reconciliation with the vendors' own usage.
--
-- price_source: where each event's price came from, short and stable: the genai-prices
-- version and the model id it matched ('genai-prices 0.2.3 openai/gpt-4o-mini'), the
-- voice-table row with the date it was checked and the tier it assumes
-- ('voice-table 2026-11-28 deepgram/nova-3 streaming'), or 'override' for a negotiated
-- price. NULL when the event is unpriced, and for rows priced before sources were
-- recorded (nothing to backfill: which table priced them is not known).
--
-- record_usage_events stores it (the version of 20261128100000_usage_modalities, plus
-- the column); old callers and old spool files that send no price_source still record.
--
-- usage_reconcile_daily sums the ledger per UTC day, kind and model for one vendor, the
-- figures `flow reconcile` compares with the vendor's usage API. A BRIN index on
-- occurred_at (tiny, and cheap to keep for an append-mostly, time-ordered table) lets it
-- read only the window's blocks.

alter table public.usage_events
  add column price_source text,
  add constraint usage_events_price_source_valid
    check (price_source is null or (length(price_source) between 1 and 200
                                     and cost_usd is not null));

create index usage_events_occurred_brin on public.usage_events using brin (occurred_at);

-- The ledger's writer: the version of 20261128100000_usage_modalities, plus price_source.
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


-- The ledger's usage of one vendor per UTC day, kind and model over [p_start, p_end):
-- requests (one event is one request), token, character and audio sums, cost and
-- unpriced events. Decimals as strings.
create or replace function public.usage_reconcile_daily(
  p_provider text, p_start timestamptz, p_end timestamptz)
returns jsonb
language plpgsql
stable
set search_path = public
as $$
declare
  result jsonb;
begin
  if p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if p_end - p_start > interval '400 days' then
    raise exception 'at most 400 days at once' using errcode = '22023';
  end if;
  select coalesce(jsonb_agg(jsonb_build_object(
      'day', to_char(d.day, 'YYYY-MM-DD'), 'kind', d.kind, 'model', d.model,
      'requests', d.requests, 'input_tokens', d.input_tokens,
      'cache_read_tokens', d.cache_read_tokens, 'output_tokens', d.output_tokens,
      'input_audio_tokens', d.input_audio_tokens, 'output_audio_tokens', d.output_audio_tokens,
      'characters', d.characters, 'audio_seconds', d.audio_seconds::text,
      'cost_usd', d.cost_usd::text, 'unpriced_events', d.unpriced_events)
      order by d.day, d.kind, d.model), '[]'::jsonb)
  into result
  from (
    select (e.occurred_at at time zone 'UTC')::date as day, e.kind, e.model,
      count(*) as requests, sum(e.input_tokens) as input_tokens,
      sum(e.cache_read_tokens) as cache_read_tokens, sum(e.output_tokens) as output_tokens,
      sum(e.input_audio_tokens) as input_audio_tokens,
      sum(e.output_audio_tokens) as output_audio_tokens, sum(e.characters) as characters,
      sum(e.audio_seconds) as audio_seconds, coalesce(sum(e.cost_usd), 0) as cost_usd,
      count(*) filter (where e.cost_usd is null) as unpriced_events
    from usage_events e
    where e.provider = p_provider and e.occurred_at >= p_start and e.occurred_at < p_end
    group by 1, 2, 3
  ) d;
  return result;
end
$$;

revoke execute on function public.record_usage_events(jsonb) from public, anon, authenticated;
grant execute on function public.record_usage_events(jsonb) to service_role;
revoke execute on function public.usage_reconcile_daily(text, timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function public.usage_reconcile_daily(text, timestamptz, timestamptz)
  to service_role;
