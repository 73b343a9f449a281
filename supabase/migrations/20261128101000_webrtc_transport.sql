-- WebRTC calls: the caller's own peer connection, answered at the join.
alter table public.workflow_threads drop constraint workflow_threads_transport_check;
alter table public.workflow_threads add constraint workflow_threads_transport_check
  check (transport in ('daily', 'simulated', 'webrtc'));
