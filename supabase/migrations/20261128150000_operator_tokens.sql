-- The operator's credential, and who each key is billed as.
--
-- operator_tokens: tokens of the people running Flow, separate from customers' API keys.
-- Like local keys, only the sha256 of a token is stored; a token is revoked, never
-- deleted, so the console's audit of who held one stays possible. An operator token
-- sees every key's data under /api/admin/; a customer key is refused there.
--
-- api_keys.stripe_customer_id: the Stripe customer a key's usage is billed to (the
-- `stripe` export sends meter events only for keys that have one).
--
-- analytics_integrations.provider gains `stripe`: the billing export, on the same
-- cycle, cursor and lease as the analytics exports.

create table public.operator_tokens (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(name) between 1 and 200),
  token_hash text not null unique check (token_hash ~ '^[0-9a-f]{64}$'),
  token_prefix text not null,
  is_active boolean not null default true,
  created_at timestamptz not null default now(),
  last_used_at timestamptz,
  revoked_at timestamptz
);

alter table public.operator_tokens enable row level security;
create policy service_role_all on public.operator_tokens
  for all to service_role using (true) with check (true);

alter table public.api_keys
  add column stripe_customer_id text
    constraint api_keys_stripe_customer_id_valid
      check (stripe_customer_id is null or stripe_customer_id ~ '^cus_[A-Za-z0-9]{1,250}$');

alter table public.analytics_integrations
  drop constraint analytics_integrations_provider_check,
  add constraint analytics_integrations_provider_check
    check (provider in ('posthog', 'mixpanel', 'stripe'));
