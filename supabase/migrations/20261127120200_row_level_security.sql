-- Row level security on every table: only service_role (Flow's server) reads or writes.
-- anon and authenticated hold table grants (as on Supabase) but no policy lets them in.

alter table public.api_keys enable row level security;
alter table public.workflow_threads enable row level security;
alter table public.usage_events enable row level security;
alter table public.analytics_integrations enable row level security;

create policy service_role_all on public.api_keys
  for all to service_role using (true) with check (true);
create policy service_role_all on public.workflow_threads
  for all to service_role using (true) with check (true);
create policy service_role_all on public.usage_events
  for all to service_role using (true) with check (true);
create policy service_role_all on public.analytics_integrations
  for all to service_role using (true) with check (true);

revoke execute on function public.touch_updated_at() from public, anon, authenticated;
