-- Stopping a call from any API instance: the instance that receives
-- POST /api/bot/{id}/stop but does not run the call records the request here; the
-- instance running it polls for requests on its own calls and ends them.
alter table public.workflow_threads add column stop_requested_at timestamptz;
