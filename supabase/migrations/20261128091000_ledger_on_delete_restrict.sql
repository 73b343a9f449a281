-- The ledger cannot be erased by a cascade. Keys are revoked, never deleted, and a call
-- is part of the bill: deleting an api_keys or workflow_threads row that has usage is
-- refused instead of silently deleting its ledger rows and rollups.
-- Each foreign key of the ledger, its rollups and the threads that cascaded is rebuilt
-- with ON DELETE RESTRICT (NOT VALID then VALIDATE, so no long lock on a large ledger).

do $$
declare
  fk record;
begin
  for fk in
    select c.conrelid::regclass as tbl, c.conname, pg_get_constraintdef(c.oid) as def
    from pg_constraint c
    where c.contype = 'f'
      and c.confdeltype = 'c'
      and c.conrelid in ('public.usage_events'::regclass,
                         'public.usage_rollup_hourly'::regclass,
                         'public.usage_rollup_call_hourly'::regclass,
                         'public.workflow_threads'::regclass)
  loop
    execute format('alter table %s drop constraint %I', fk.tbl, fk.conname);
    execute format('alter table %s add constraint %I %s not valid', fk.tbl, fk.conname,
                   replace(fk.def, 'ON DELETE CASCADE', 'ON DELETE RESTRICT'));
    execute format('alter table %s validate constraint %I', fk.tbl, fk.conname);
  end loop;
end
$$;
