-- Benchmark setup A: Prosody answers roster gets itself (mod_roster),
-- from rosters written into its storage beforehand.
VirtualHost "example.org"
