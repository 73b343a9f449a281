-- Analytics exports: a commit-safe cursor over the ledger, a lease so one Flow instance
-- syncs an integration at a time, and the bookkeeping the status page shows.
--
-- Why a transaction-id cursor and not `seq` alone: `seq` is taken when a row is
-- inserted, not when it commits. Transaction A can take seq 5, transaction B seq 6, and B
-- can commit first; an exporter that saw 6 and moved its cursor to 6 would never see 5.
--
-- Every ledger row records the top-level transaction that inserted it (`txid`, an xid8,
-- which never wraps around). An exporter reads only rows whose transaction is older than
-- its snapshot's xmin (`pg_snapshot_xmin(pg_current_snapshot())`): every transaction
-- below xmin has finished, so the set of rows with such txids is final and nothing can
-- appear among them later. Any row still to come belongs to a transaction at or above
-- xmin, hence sorts after everything exported. The cursor is the pair (txid, seq) of the
-- last row exported, and rows are read in (txid, seq) order. No row is ever skipped and
-- the writers are untouched: record_usage_events needs no lock or sequence of its own.
-- The price is latency, not loss: a long-running transaction anywhere in the cluster
-- holds xmin back and delays exports until it ends.
--
-- The ledger is append-only (rows are inserted once, ON CONFLICT DO NOTHING, and never
-- updated), which is what makes a row's txid a safe sort key.

alter table public.usage_events
  add column txid xid8 not null default pg_current_xact_id();
create index usage_events_export_idx on public.usage_events (txid, seq);
create index usage_events_key_export_idx on public.usage_events (api_key_id, txid, seq);

alter table public.analytics_integrations
  add column cursor_txid xid8 not null default '0'::xid8,
  add column events_skipped bigint not null default 0,
  add column last_warning text,
  add column name text check (name is null or length(name) <= 200);
create index analytics_integrations_due_idx on public.analytics_integrations (next_sync_at)
  where status in ('active', 'syncing');

comment on column public.analytics_integrations.cursor_txid is
  'Export cursor, first half: the inserting transaction of the last exported ledger row.';
comment on column public.analytics_integrations.cursor_seq is
  'Export cursor, second half: the seq of the last exported ledger row.';
comment on column public.analytics_integrations.events_skipped is
  'Rows passed over and reported: refused by the destination (Mixpanel strict mode) or '
  'too old for Mixpanel /track without an API secret.';

-- The export horizon: transactions below it have all finished.
create or replace function public.analytics_export_horizon()
returns text
language sql
stable
set search_path = public
as $$
  select pg_snapshot_xmin(pg_current_snapshot())::text;
$$;

-- Claims integrations that are due (or the given ones, when forced) for one owner, in
-- one statement. SKIP LOCKED plus the re-checked WHERE make a claim exclusive: two
-- instances racing for the same row cannot both win. A `syncing` row whose lease has
-- expired (its instance died) is claimable again.
create or replace function public.analytics_claim_integrations(
  p_owner text,
  p_lease_seconds integer,
  p_limit integer default 10,
  p_force boolean default false,
  p_ids uuid[] default null
)
returns setof public.analytics_integrations
language sql
volatile
set search_path = public
as $$
  -- The candidates are picked once (a MATERIALIZED CTE): a LIMIT ... SKIP LOCKED subquery
  -- inside IN may be re-run by the planner and hand out more rows than asked for.
  with picked as materialized (
    select c.id from analytics_integrations c
    where (c.status = 'active' or (c.status = 'syncing' and c.lease_expires_at < now()))
      and (c.lease_expires_at is null or c.lease_expires_at < now())
      and (p_force or c.next_sync_at <= now())
      and (p_ids is null or c.id = any (p_ids))
    order by c.next_sync_at
    limit greatest(p_limit, 0)
    for update skip locked
  )
  update analytics_integrations a
  set status = 'syncing',
      lease_owner = p_owner,
      lease_expires_at = now() + make_interval(secs => p_lease_seconds)
  from picked
  where a.id = picked.id
    and (a.status = 'active' or (a.status = 'syncing' and a.lease_expires_at < now()))
    and (a.lease_expires_at is null or a.lease_expires_at < now())
  returning a.*;
$$;

-- One page of ledger rows after the cursor, for the lease holder. Read-only (STABLE, one
-- snapshot for the whole function), so the reader itself never holds back the horizon.
-- Rows before backfill_from are scanned past (the cursor moves over them) but not
-- returned. Money and latency travel as text so they stay exact.
create or replace function public.analytics_export_page(
  p_id uuid,
  p_owner text,
  p_limit integer
)
returns jsonb
language plpgsql
stable
set search_path = public
as $$
declare
  i analytics_integrations;
  horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
  page jsonb;
begin
  select * into i from analytics_integrations where id = p_id;
  if not found then
    return jsonb_build_object('status', 'deleted', 'leased', false);
  end if;
  if i.lease_owner is distinct from p_owner or i.status <> 'syncing' then
    return jsonb_build_object('status', i.status, 'leased', false);
  end if;

  -- Dynamic SQL so each scope gets the plan that walks its own (.., txid, seq) index.
  execute format($q$
    with scan as (
      select e.* from usage_events e
      where %s
        and (e.txid, e.seq) > ($1, $2) and e.txid < $3
      order by e.txid, e.seq
      limit $4
    )
    select jsonb_build_object(
      'status', 'syncing',
      'leased', true,
      'scanned', count(*),
      'last', (array_agg(jsonb_build_array(s.txid::text, s.seq)
                 order by s.txid desc, s.seq desc))[1],
      'rows', coalesce(jsonb_agg(jsonb_build_object(
          'id', s.id, 'seq', s.seq, 'workflow_thread_id', s.workflow_thread_id,
          'api_key_id', s.api_key_id, 'end_user_id', s.end_user_id,
          'occurred_at', s.occurred_at, 'kind', s.kind, 'category', s.category,
          'provider', s.provider, 'model', s.model,
          'input_tokens', s.input_tokens, 'output_tokens', s.output_tokens,
          'cost_usd', s.cost_usd::text, 'latency_ms', s.latency_ms::text,
          'status_code', s.status_code, 'is_error', s.is_error, 'cache_hit', s.cache_hit,
          'estimated', s.estimated)
        order by s.txid, s.seq)
        filter (where $5::timestamptz is null or s.occurred_at >= $5), '[]'::jsonb))
    from scan s
  $q$, case when i.all_keys then 'true' else format('e.api_key_id = %L', i.api_key_id) end)
  into page
  using i.cursor_txid, i.cursor_seq, horizon, greatest(p_limit, 1), i.backfill_from;
  return page;
end
$$;

-- How many ledger rows wait after the cursor (for progress bars).
create or replace function public.analytics_export_backlog(p_id uuid)
returns bigint
language sql
stable
set search_path = public
as $$
  select count(*) from analytics_integrations i
  join usage_events e on (i.all_keys or e.api_key_id = i.api_key_id)
    and (e.txid, e.seq) > (i.cursor_txid, i.cursor_seq)
    and (i.backfill_from is null or e.occurred_at >= i.backfill_from)
  where i.id = p_id;
$$;

-- Moves the cursor after the destination accepted a batch, and renews the lease. Only
-- the lease holder moves it, and only forward. Returns the status (an empty result means
-- the lease was lost or the integration deleted: the caller stops).
create or replace function public.analytics_export_advance(
  p_id uuid,
  p_owner text,
  p_txid text,
  p_seq bigint,
  p_exported integer,
  p_skipped integer,
  p_warning text,
  p_lease_seconds integer
)
returns table (status text, events_exported bigint)
language sql
volatile
set search_path = public
as $$
  update analytics_integrations a
  set cursor_txid = p_txid::xid8,
      cursor_seq = p_seq,
      events_exported = a.events_exported + greatest(p_exported, 0),
      events_skipped = a.events_skipped + greatest(p_skipped, 0),
      last_warning = coalesce(p_warning, a.last_warning),
      lease_expires_at = now() + make_interval(secs => p_lease_seconds)
  where a.id = p_id and a.lease_owner = p_owner
    and (a.cursor_txid, a.cursor_seq) < (p_txid::xid8, p_seq)
  returning a.status, a.events_exported;
$$;

-- Renews the lease during long retries; returns the status, or nothing if lost.
create or replace function public.analytics_export_renew(
  p_id uuid, p_owner text, p_lease_seconds integer)
returns text
language sql
volatile
set search_path = public
as $$
  update analytics_integrations a
  set lease_expires_at = now() + make_interval(secs => p_lease_seconds)
  where a.id = p_id and a.lease_owner = p_owner
  returning a.status;
$$;

-- Ends a cycle: frees the lease and records the outcome. A status set meanwhile by a
-- person (paused, resumed, credentials edited) wins over the cycle's own.
create or replace function public.analytics_export_release(
  p_id uuid,
  p_owner text,
  p_status text,
  p_error text,
  p_synced boolean,
  p_retry_in_seconds integer default null
)
returns text
language sql
volatile
set search_path = public
as $$
  update analytics_integrations a
  set status = case when a.status = 'syncing' then p_status else a.status end,
      last_error = case when a.status = 'syncing' then p_error else a.last_error end,
      last_synced_at = case when p_synced then now() else a.last_synced_at end,
      next_sync_at = now() + make_interval(
        secs => coalesce(p_retry_in_seconds, a.sync_interval_seconds)),
      lease_owner = null,
      lease_expires_at = null
  where a.id = p_id and a.lease_owner = p_owner
  returning a.status;
$$;

-- Starts a new integration's cursor at the current horizon (backfill "none").
create or replace function public.analytics_export_start_now(p_id uuid)
returns void
language sql
volatile
set search_path = public
as $$
  update analytics_integrations
  set cursor_txid = pg_snapshot_xmin(pg_current_snapshot()),
      cursor_seq = 0
  where id = p_id;
$$;

do $$
declare
  fn text;
begin
  foreach fn in array array[
    'analytics_export_horizon()',
    'analytics_claim_integrations(text, integer, integer, boolean, uuid[])',
    'analytics_export_page(uuid, text, integer)',
    'analytics_export_backlog(uuid)',
    'analytics_export_advance(uuid, text, text, bigint, integer, integer, text, integer)',
    'analytics_export_renew(uuid, text, integer)',
    'analytics_export_release(uuid, text, text, text, boolean, integer)',
    'analytics_export_start_now(uuid)'
  ] loop
    execute format('revoke execute on function public.%s from public, anon, authenticated', fn);
    execute format('grant execute on function public.%s to service_role', fn);
  end loop;
end
$$;
