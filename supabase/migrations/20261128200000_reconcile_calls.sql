-- usage_reconcile_daily also counts the calls behind each day, kind and model
-- (``calls``): a vendor that streams (Deepgram's live transcription and speech) counts
-- one request per call's connection, where the ledger holds an event per report.
-- Everything else as in 20261128130000_price_provenance.

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
      'cost_usd', d.cost_usd::text, 'unpriced_events', d.unpriced_events,
      'calls', d.calls)
      order by d.day, d.kind, d.model), '[]'::jsonb)
  into result
  from (
    select (e.occurred_at at time zone 'UTC')::date as day, e.kind, e.model,
      count(*) as requests, sum(e.input_tokens) as input_tokens,
      sum(e.cache_read_tokens) as cache_read_tokens, sum(e.output_tokens) as output_tokens,
      sum(e.input_audio_tokens) as input_audio_tokens,
      sum(e.output_audio_tokens) as output_audio_tokens, sum(e.characters) as characters,
      sum(e.audio_seconds) as audio_seconds, coalesce(sum(e.cost_usd), 0) as cost_usd,
      count(*) filter (where e.cost_usd is null) as unpriced_events,
      count(distinct e.workflow_thread_id) as calls
    from usage_events e
    where e.provider = p_provider and e.occurred_at >= p_start and e.occurred_at < p_end
    group by 1, 2, 3
  ) d;
  return result;
end
$$;

revoke execute on function public.usage_reconcile_daily(text, timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function public.usage_reconcile_daily(text, timestamptz, timestamptz)
  to service_role;
