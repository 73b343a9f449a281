-- Core tables: API keys, calls (workflow_threads), the usage ledger, analytics integrations.

create extension if not exists pgcrypto;

create table public.api_keys (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(name) between 1 and 200),
  unkey_key_id text unique,
  key_hash text unique check (key_hash is null or key_hash ~ '^[0-9a-f]{64}$'),
  key_prefix text,
  owner text,
  is_active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  last_used_at timestamptz,
  revoked_at timestamptz,
  constraint api_keys_one_identity check ((unkey_key_id is null) <> (key_hash is null))
);

create table public.workflow_threads (
  workflow_thread_id uuid primary key default gen_random_uuid(),
  api_key_id uuid not null references public.api_keys (id) on delete cascade,
  status text not null default 'pending'
    check (status in ('pending', 'starting', 'running', 'processing', 'completed', 'failed')),
  error_stage text,
  error_code text,
  error_message text,
  transport text not null default 'daily' check (transport in ('daily', 'simulated')),
  room_url text,
  bot_config jsonb not null default '{}'::jsonb,
  script jsonb,
  end_user_id text check (end_user_id is null or length(end_user_id) <= 255),
  process_insights boolean not null default true,
  analysis_prompt text,
  webhook_url text,
  metadata jsonb not null default '{}'::jsonb,
  transcript jsonb,
  insights jsonb,
  usage_stats jsonb not null default '{}'::jsonb,
  posthog_trace_id text,
  bot_started_at timestamptz,
  bot_ended_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index workflow_threads_api_key_id_idx on public.workflow_threads (api_key_id, created_at desc);
create index workflow_threads_status_idx on public.workflow_threads (status)
  where status in ('pending', 'starting', 'running', 'processing');

-- The ledger: one row per metered unit of work. `id` is the idempotency key from the
-- moment the event is created; `seq` orders rows for exporters.
create table public.usage_events (
  id uuid primary key,
  seq bigint generated always as identity unique,
  workflow_thread_id uuid not null references public.workflow_threads (workflow_thread_id)
    on delete cascade,
  api_key_id uuid not null references public.api_keys (id) on delete cascade,
  end_user_id text check (end_user_id is null or length(end_user_id) <= 255),
  occurred_at timestamptz not null,
  recorded_at timestamptz not null default now(),
  kind text not null constraint usage_events_kind_valid check (kind in ('llm', 'tts', 'stt')),
  category text not null default 'bot'
    constraint usage_events_category_valid check (category in ('bot', 'insights')),
  provider text not null check (length(provider) between 1 and 100),
  model text not null check (length(model) between 1 and 200),
  processor text,
  input_tokens bigint not null default 0
    constraint usage_events_input_tokens_nonnegative check (input_tokens >= 0),
  output_tokens bigint not null default 0
    constraint usage_events_output_tokens_nonnegative check (output_tokens >= 0),
  cache_read_tokens bigint not null default 0
    constraint usage_events_cache_read_tokens_within_input
      check (cache_read_tokens >= 0 and (input_tokens < 0 or cache_read_tokens <= input_tokens)),
  cache_write_tokens bigint not null default 0
    constraint usage_events_cache_write_tokens_nonnegative check (cache_write_tokens >= 0),
  reasoning_tokens bigint not null default 0
    constraint usage_events_reasoning_tokens_nonnegative check (reasoning_tokens >= 0),
  characters bigint not null default 0
    constraint usage_events_characters_nonnegative check (characters >= 0),
  audio_seconds numeric(14, 3) not null default 0
    constraint usage_events_audio_seconds_nonnegative check (audio_seconds >= 0),
  cost_usd numeric(20, 10)
    constraint usage_events_cost_usd_nonnegative check (cost_usd is null or cost_usd >= 0),
  latency_ms numeric(12, 1)
    constraint usage_events_latency_ms_nonnegative check (latency_ms is null or latency_ms >= 0),
  status_code integer,
  is_error boolean not null default false,
  cache_hit boolean not null default false,
  estimated boolean not null default false
);
create index usage_events_key_time_idx on public.usage_events (api_key_id, occurred_at);
create index usage_events_thread_idx on public.usage_events (workflow_thread_id);

create table public.analytics_integrations (
  id uuid primary key default gen_random_uuid(),
  api_key_id uuid references public.api_keys (id) on delete cascade,
  all_keys boolean not null default false,
  provider text not null check (provider in ('posthog', 'mixpanel')),
  settings jsonb not null default '{}'::jsonb,
  credentials_encrypted text not null,
  credentials_hint text,
  status text not null default 'active'
    check (status in ('active', 'syncing', 'paused', 'error')),
  sync_interval_seconds integer not null default 3600
    check (sync_interval_seconds between 60 and 86400),
  backfill_from timestamptz,
  cursor_seq bigint not null default 0,
  last_synced_at timestamptz,
  next_sync_at timestamptz not null default now(),
  last_error text,
  events_exported bigint not null default 0,
  lease_owner text,
  lease_expires_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint analytics_integrations_scope check (all_keys or api_key_id is not null)
);
create index analytics_integrations_key_idx on public.analytics_integrations (api_key_id);

create or replace function public.touch_updated_at() returns trigger
language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end
$$;

create trigger api_keys_touch before update on public.api_keys
  for each row execute function public.touch_updated_at();
create trigger workflow_threads_touch before update on public.workflow_threads
  for each row execute function public.touch_updated_at();
create trigger analytics_integrations_touch before update on public.analytics_integrations
  for each row execute function public.touch_updated_at();
