-- Benchmark setup A: Prosody answers roster gets itself (mod_roster),
-- from rosters written into its storage beforehand.
VirtualHost "example.org"

-- The rest of B's configuration (contrib/prosody/rosteradmin.cfg.lua) that
-- does not serve rosteradmin: a deployment has its MUC service with or
-- without rosteradmin, so both setups load it and the comparison is of
-- roster handling alone.
Component "conference.example.org" "muc"
    muc_room_locking = false
