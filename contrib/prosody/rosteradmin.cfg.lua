-- Prosody configuration for rosteradmin (Prosody 0.12 or 13 with Debian's
-- prosody-modules).  It sets no ports, TLS, authentication or storage:
-- those stay in your prosody.cfg.lua.  Debian's prosody.cfg.lua ends with
-- Include "conf.d/*.cfg.lua", so copying this file into /etc/prosody/conf.d/
-- is enough; otherwise add
--
--     Include "/etc/prosody/conf.d/rosteradmin.cfg.lua"
--
-- (an included file starts in the global section wherever it is included).
-- Replace example.org, roster.example.org, conference.example.org and the
-- component secret with your own.  rosteradmin's integration tests and its
-- demo start Prosody with exactly this file.

-- The component's JID is a server admin, so it may moderate every room of
-- the MUC service below (XEP-0045 kicks, POST /muc_kick).  Prosody still
-- wants a moderator to be an occupant; rosteradmin joins the room when it
-- needs to.  This is a global option, and it replaces any admins list set
-- before the Include: if you have server admins, list them here as well.
admins = { "roster.example.org" }

-- Prosody closes a component stream carrying a stanza larger than
-- component_stanza_size_limit (a global, default 512 KiB), and a roster
-- answer holds the whole roster.  rosteradmin never sends more than its
-- --max-stanza-bytes (default 512 KiB): users whose roster does not fit
-- (about 5,000 contacts with a name and a group) get an error instead.
-- To serve them, raise both to the same value, e.g.
--     component_stanza_size_limit = 4 * 1024 * 1024   -- and --max-stanza-bytes 4194304

VirtualHost "example.org"
    -- mod_privilege (XEP-0356) and mod_delegation (XEP-0355) ship in
    -- prosody-modules; they must be enabled on the users' host...
    -- mod_rosteradmin_subscriptions ships with rosteradmin (next to this
    -- file): it stops subscription presences (subscribe, subscribed,
    -- unsubscribe, unsubscribed) to and from this host's users, which Prosody
    -- would otherwise apply to the stored rosters behind the web app's back,
    -- and drops the errors Prosody would bounce to users for their presences
    -- while rosteradmin is disconnected.
    -- Copy both into a plugin path, e.g.
    --     install -m 644 mod_rosteradmin_*.lua /usr/local/lib/prosody/modules/
    -- mod_rosteradmin_roster (also next to this file) lets rosteradmin write
    -- many roster items with one save instead of one full save per item, and
    -- answers a user's roster gets from the stored roster once rosteradmin
    -- has said that it holds what rosteradmin answers (set
    -- rosteradmin_answer_rosters = false to delegate every query), at most
    -- rosteradmin_roster_get_rate (default 20) gets a second per user.  It
    -- also holds a login until rosteradmin has stored the roster of a user it
    -- has not written since Prosody started, so her first presence reaches
    -- her contacts: at most rosteradmin_load_timeout seconds (default 5);
    -- rosteradmin_load_rosters = false turns that off.  And when a write
    -- adds or removes contacts of a user who is online, it sends the
    -- presence a subscription approval (or its cancellation) would.  It
    -- also keeps the rosters rosteradmin reads and writes for offline users
    -- (every user's, in a full sync) out of Prosody's roster cache, where
    -- they would slow every login down.
    modules_enabled = { "privilege"; "delegation"; "rosteradmin_subscriptions"; "rosteradmin_roster" }

    -- XEP-0356: what rosteradmin may do with this host's users.
    privileged_entities = {
        ["roster.example.org"] = {
            -- read and write users' stored rosters, so that the server
            -- routes presence between the contacts the web app lists
            roster = "both";
            -- receive users' presences: rosteradmin learns who is online
            -- (to push roster changes) and fetches rosters before clients ask
            presence = "managed_entity";
            -- send roster pushes from a user's bare JID: Prosody pushes
            -- nothing itself while jabber:iq:roster is delegated
            iq = { ["jabber:iq:roster"] = "set" };
        };
    }

    -- XEP-0355: clients' roster queries go to rosteradmin, which answers
    -- from the web app and refuses roster changes.
    delegations = {
        ["jabber:iq:roster"] = { jid = "roster.example.org" };
    }

-- The external component itself (XEP-0114).  rosteradmin connects to the
-- component port (component_ports, default 5347) with this secret.
Component "roster.example.org"
    component_secret = "change-me" -- CHANGE THIS; give rosteradmin the same value (--secret-file)
    -- ...and on the component host too, or nothing is advertised to it.
    modules_enabled = { "privilege"; "delegation" }

-- The chat rooms users can be kicked from (XEP-0045).
Component "conference.example.org" "muc"
    -- rooms are usable as soon as they are created
    muc_room_locking = false
    -- server admins (rosteradmin, above) are owners of every room, so they
    -- may kick: the default on Prosody 0.12, but not on Prosody 13, where
    -- kicks are refused with not-allowed without it
    component_admins_as_room_owners = true
