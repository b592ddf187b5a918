-- mod_rosteradmin_roster: write many roster items with one save.
--
-- mod_privilege (XEP-0356) takes one item per roster set and saves the whole
-- roster after each: writing an 8,000-contact roster costs Prosody 8,000 full
-- saves, minutes of CPU during which every other user waits.  This module
-- lets the privileged entity (rosteradmin) send many items in one iq:
--
--   <iq type='set' from='roster.example.org' to='alice@example.org' id='...'>
--     <query xmlns='urn:x-rosteradmin:roster:0'>
--       <item jid='bob@example.org' name='Bob' subscription='both'><group>Friends</group></item>
--       <item jid='carol@example.org' subscription='remove'/>
--     </query>
--   </iq>
--
-- Items are applied in order (subscription 'both', or 'remove'), then the
-- roster is saved once and the result is sent.  Only an entity granted roster
-- 'set' or 'both' by mod_privilege's privileged_entities may use it; anyone
-- else gets forbidden.  Nothing is pushed to the user's clients: rosteradmin
-- pushes the changes itself.
--
-- Presence follows the write, as after a subscription approval (RFC 6121
-- 3.1.5, and 3.2/3.3 for a removal): Prosody's mod_presence does this only
-- for subscription presences, never after a roster write, so without it two
-- online users a refresh made contacts would not see each other until one
-- of them sent presence again.  When the user has sessions that sent
-- presence:
--   * each one's current presence goes to every contact the write made
--     receive it ('both' or 'from'): to a remote contact's bare JID, to a
--     local contact's available sessions once the contact's own roster
--     lists the user (the second half of a pair refresh);
--   * every contact the write made the user receive ('both' or 'to') is
--     awaited by each of those sessions until rosteradmin's push of that
--     contact (or a roster answer) reaches it; right after it, a local
--     contact's available sessions send their presence to that session if
--     the contact's roster lists the user (what mod_presence answers a
--     probe with), and a remote contact is probed.  A client may drop
--     presence from someone not on its roster yet (Converse does);
--   * every contact removed gets an unavailable from each of them, and a
--     local one's available sessions send the user theirs.
-- No subscription presence is sent, and no probe to a local contact, whose
-- automatic unsubscribed answer would cancel the user's subscription (on a
-- server without mod_rosteradmin_subscriptions).
--
-- A query may carry ver='...': the roster version rosteradmin's answers
-- for this user carry, now that the stored roster holds what they hold
-- (a promise).  The module then answers that user's roster gets itself,
-- before mod_delegation would forward them, as Prosody's mod_roster would
-- but with rosteradmin's version: an empty result for a get with that
-- version (XEP-0237), else the stored roster.  Delegating a query costs
-- Prosody about twice its own answer, and rosteradmin a web-app fetch
-- after its restart.  A promise holds only while the stored roster is
-- unchanged (the roster's own version, bumped by every save, is kept with
-- it), until the user's client tries a roster set (rosteradmin answers the
-- next query: the client may show its refused change), or until
-- rosteradmin sends ver='' (to the user, or to this host for every user).
-- Promises live in memory: after a restart of Prosody, rosteradmin answers
-- again.  rosteradmin_answer_rosters = false turns it off.  A query with
-- ver and no items only records the promise (nothing is saved).
-- rosteradmin's half of this contract, when it promises and revokes, is
-- rosteradmin/promises.py.
--
-- It answers each user at most rosteradmin_roster_get_rate gets a second
-- (default 20, as rosteradmin's --query-rate), in bursts of two seconds'
-- worth; beyond that, a get is answered with a resource-constraint error of
-- type wait, as rosteradmin answers a flood, and not delegated.
--
-- A session that asked for its roster and sent no presence wants roster
-- pushes all the same (RFC 6121 2.1.6), but nothing tells rosteradmin of it
-- when this module answered the get, or when rosteradmin restarted since
-- (mod_privilege replays presences only).  So the module tells it, once per
-- session it answered, with a message from the session's full JID to the
-- privileged entity,
--   <message from='alice@example.org/phone' to='roster.example.org'>
--     <answered xmlns='urn:x-rosteradmin:session:0' ver='...'/></message>
-- and <ended xmlns='urn:x-rosteradmin:session:0'/> when a session that asked
-- ends without presence; and it answers the entity's
--   <iq type='get' to='example.org'><sessions xmlns='urn:x-rosteradmin:session:0'/></iq>
-- with every such session, <session jid='...' ver='...'/> each (ver: the
-- version this module answered it, if it did), at most 10,000.
--
-- A login waits for the user's roster (the seed mod_http_roster_admin
-- gave): when a client binds a resource and rosteradmin has not vouched
-- for the user's stored roster in this Prosody run (no write, promise or
-- load of it since Prosody started), the module asks rosteradmin, before
-- Prosody loads the roster,
--   <iq type='get' from='example.org' to='roster.example.org' id='...'>
--     <query xmlns='urn:x-rosteradmin:roster:0'><load user='alice'/></query></iq>
-- and holds the bind until the result: rosteradmin answers it once the
-- stored roster is the web app's (fetched and written for a user it has
-- not synced; at once for one it has).  The client's stanzas after the
-- bind (its initial presence) wait in the socket meanwhile, so that
-- presence goes out to the contacts the web app lists, and probes them.
-- Only that session waits: the bind runs in the session's async runner.
-- The wait ends after rosteradmin_load_timeout seconds (default 5), or at
-- once on an error (rosteradmin disconnected: Prosody bounces it; the fetch
-- failed): the login then goes on with the roster stored, as without this
-- module, and the roster get that follows is answered as ever.  Logins of
-- one user share one request; at most rosteradmin_loads_in_flight (default
-- 200) are asked at once, and a login beyond that goes on without asking.
-- Before rosteradmin's first connection since Prosody started, nothing is
-- asked.  rosteradmin_load_rosters = false turns it off.
--
-- Load it on the VirtualHost whose rosters rosteradmin manages, next to
-- mod_privilege:
--     modules_enabled = { "privilege"; "delegation"; "rosteradmin_roster"; ... }
-- rosteradmin uses it when the server answers it, and writes one item per
-- privileged set otherwise.
--
-- It also reads the privileged entity's component stream in chunks of
-- rosteradmin_component_read_size bytes (default 64 KiB) instead of the 4 KiB
-- every listener gets (network_default_read_size): every user's roster
-- answers come over that one stream, and with 4 KiB per turn of the network
-- loop it waited behind each of hundreds of client connections for every
-- 5 KB answer (docs/benchmarks.md, "Where the server's time goes").  Only the
-- read size changes; component_stanza_size_limit applies as before.

local st = require "util.stanza";
local jid = require "util.jid";
local cache = require "util.cache";
local throttle = require "util.throttle";
local async = require "util.async";
local new_id = require "util.id".short;
local promise = require "util.promise";
local time_now = require "util.time".now;
local rostermanager = require "core.rostermanager";
local usermanager = require "core.usermanager";
local core_post_stanza = prosody.core_post_stanza;

local xmlns = "urn:x-rosteradmin:roster:0";
local xmlns_session = "urn:x-rosteradmin:session:0";
local granted = { set = true; both = true };
local read_size = module:get_option_number("rosteradmin_component_read_size", 64 * 1024);
local answer_rosters = module:get_option_boolean("rosteradmin_answer_rosters", true);

-- username -> { ver = rosteradmin's version, stored = the stored roster's
-- version when rosteradmin gave it, by = the JID of the entity that gave it }
local current = {};

-- The privileged entity's JID, once it wrote or asked: where session
-- notices and roster loads go.
local entity;

-- username -> true: rosteradmin wrote, promised or loaded the stored roster
-- in this Prosody run, so a login need not wait for it.
local vouched = {};

local max_listed_sessions = 10000;

module:add_feature(xmlns);

local function is_privileged(session)
	local privileges = session.privileges and session.privileges[module.host];
	return privileges ~= nil and granted[privileges.roster] == true;
end

local function item_of(item)
	local entry = { subscription = "both"; groups = {} };
	local name = item.attr.name;
	if name and name ~= "" then entry.name = name; end
	for group in item:childtags("group") do
		local text = group:get_text();
		if text and text ~= "" then entry.groups[text] = true; end
	end
	return entry;
end

-- Whether a roster item sends the owner's presence to the contact
-- (the contact is subscribed to the owner), and whether it brings the
-- contact's presence to the owner; false or nil is no item.
local function sends(item) return item and (item.subscription == "both" or item.subscription == "from") or false; end
local function receives(item) return item and (item.subscription == "both" or item.subscription == "to") or false; end

local function is_local(contact)
	local host = prosody.hosts[select(2, jid.split(contact))];
	return host ~= nil and host.type == "local";
end

-- The sessions of a local user that sent presence, and the user's roster
-- in memory ({} and nil for a user who is offline or not local).
local function available(bare)
	local user = prosody.bare_sessions[bare];
	local found = {};
	if not user then return found, nil; end
	for _, session in pairs(user.sessions) do
		if session.presence then found[#found + 1] = session; end
	end
	return found, user.roster;
end

-- Each session's presence (or, given one, that presence from each) to a
-- JID, as mod_presence's send_presence_of_available_resources routes it.
local function send_from(sessions, to, presence)
	for _, session in ipairs(sessions) do
		local sent = presence or session.presence;
		if presence then sent.attr.from = session.full_jid; end
		sent.attr.to = to;
		core_post_stanza(session, sent, true);
		sent.attr.to = nil;
	end
end

-- A contact's presence for one session of the owner, which has just been
-- shown the contact: a local contact's available sessions send theirs if
-- its own roster lists the owner (what mod_presence answers a probe with),
-- a remote contact is probed.
local function bring(session, owner, contact)
	if is_local(contact) then
		local theirs, their_roster = available(contact);
		if their_roster and sends(their_roster[owner]) then send_from(theirs, session.full_jid); end
	else
		core_post_stanza(session, st.presence({ type = "probe"; from = session.full_jid; to = contact }), true);
	end
end

-- A session has been sent the given contacts (a push's items), or its
-- whole roster (contacts nil: a roster answer): the presence of each one
-- it awaits goes to it, after what was sent.
local function shown(session, contacts)
	local awaiting = session.rosteradmin_awaiting;
	if not awaiting then return; end
	local owner, roster = session.username .. "@" .. session.host, session.roster;
	local due = {};
	for contact in pairs(contacts or awaiting) do
		if awaiting[contact] then
			awaiting[contact] = nil;
			if roster and receives(roster[contact]) then due[#due + 1] = contact; end
		end
	end
	if #due == 0 then return; end
	module:add_timer(0, function ()
		if not session.presence or prosody.full_sessions[session.full_jid] ~= session then return; end
		for _, contact in ipairs(due) do bring(session, owner, contact); end
	end);
end

-- The owner's presence for a contact a write made receive it: a remote
-- contact's server decides what to do with it; a local contact's
-- sessions get it once the contact's roster lists the owner, those
-- awaiting the push of the owner at that push (shown).
local function give(mine, owner, contact)
	if not is_local(contact) then
		send_from(mine, contact);
		return;
	end
	local theirs, their_roster = available(contact);
	if not (their_roster and receives(their_roster[owner])) then return; end
	for _, session in ipairs(theirs) do
		local awaiting = session.rosteradmin_awaiting;
		if not (awaiting and awaiting[owner]) then send_from(mine, session.full_jid); end
	end
end

-- What a subscription approval, or its cancellation, would have sent
-- when this write changed the owner's contacts (see the top of this
-- file).  A session's view of its roster comes from rosteradmin's pushes,
-- which follow the write, and a client may drop presence from someone
-- not on its roster (Converse does): so a contact's presence waits in
-- rosteradmin_awaiting for the push of that contact to the session.
local function exchange_presence(owner, roster, previous)
	local mine = available(owner);
	if #mine == 0 then return; end
	for contact, before in pairs(previous) do
		local after = roster[contact];
		if sends(after) and not sends(before) then
			give(mine, owner, contact);
		elseif sends(before) and not sends(after) then
			send_from(mine, contact, st.presence({ type = "unavailable" }));
		end
		local gained, lost = receives(after) and not receives(before), receives(before) and not receives(after);
		if gained or lost then
			for _, session in ipairs(mine) do
				session.rosteradmin_awaiting = session.rosteradmin_awaiting or {};
				session.rosteradmin_awaiting[contact] = gained or nil;
			end
		end
		if lost and is_local(contact) then
			send_from((available(contact)), owner, st.presence({ type = "unavailable" }));
		end
	end
end

-- A roster push (rosteradmin's, through mod_privilege, from the user's
-- bare JID) or a delegated roster answer to one of a user's sessions:
-- mod_iq delivers it after this hook.
module:hook("iq/full", function(event)
	local stanza = event.stanza;
	local query = stanza.tags[1];
	local kind = stanza.attr.type;
	if (kind ~= "set" and kind ~= "result") or not query or query.name ~= "query"
		or query.attr.xmlns ~= "jabber:iq:roster" or stanza.attr.from ~= jid.bare(stanza.attr.to) then
		return;
	end
	local session = prosody.full_sessions[stanza.attr.to];
	if not (session and session.rosteradmin_awaiting) then return; end
	local contacts;
	if kind == "set" then
		contacts = {};
		for item in query:childtags("item") do
			local contact = item.attr.jid and jid.prep(item.attr.jid);
			if contact then contacts[contact] = true; end
		end
	end
	shown(session, contacts);
end, 10);

module:hook("iq-set/bare/" .. xmlns .. ":query", function(event)
	local origin, stanza = event.origin, event.stanza;
	local query = stanza.tags[1];
	if query.attr.ver == "" and not query.tags[1] and origin.type == "component" then
		-- Ending a promise only makes Prosody delegate again: rosteradmin
		-- may do it after losing its roster privileges.
		local username = (jid.split(stanza.attr.to));
		current[username], vouched[username] = nil, nil;
		origin.send(st.reply(stanza));
		return true;
	end
	if not is_privileged(origin) then
		origin.send(st.error_reply(stanza, "auth", "forbidden"));
		return true;
	end
	entity = origin.host;
	local username, host = jid.split(stanza.attr.to);
	if not usermanager.user_exists(username, host) then
		origin.send(st.error_reply(stanza, "cancel", "item-not-found", "No such user"));
		return true;
	end
	local roster = rostermanager.load_roster(username, host);
	if not roster then
		origin.send(st.error_reply(stanza, "wait", "internal-server-error", "Cannot load the roster"));
		return true;
	end
	local owner = jid.bare(stanza.attr.to);
	local changes = {};
	for item in query:childtags("item") do
		local contact = item.attr.jid and jid.prep(item.attr.jid);
		if not contact or contact == owner or contact == "pending" or select(3, jid.split(contact)) then
			origin.send(st.error_reply(stanza, "modify", "bad-request", "Invalid item: " .. tostring(item.attr.jid)));
			return true;
		end
		if item.attr.subscription == "remove" then
			changes[#changes + 1] = { contact, nil };
		elseif item.attr.subscription == "both" then
			changes[#changes + 1] = { contact, item_of(item) };
		else
			origin.send(st.error_reply(stanza, "modify", "bad-request", "Subscription must be both or remove"));
			return true;
		end
	end
	local previous;
	if #changes > 0 then
		previous = {};
		for _, change in ipairs(changes) do
			local contact = change[1];
			if previous[contact] == nil then previous[contact] = roster[contact] or false; end
			roster[contact] = change[2];
		end
		if not rostermanager.save_roster(username, host, roster) then
			for contact, entry in pairs(previous) do roster[contact] = entry or nil; end
			current[username], vouched[username] = nil, nil;
			origin.send(st.error_reply(stanza, "wait", "internal-server-error", "Unable to save roster"));
			return true;
		end
		module:log("debug", "%d roster items written for %s in one save", #changes, owner);
	end
	local ver = query.attr.ver;
	vouched[username] = ver ~= "" or nil;
	if ver == "" or not answer_rosters then
		current[username] = nil;
	elseif ver then
		local stored = roster[false] and roster[false].version;
		-- mod_groups sets the version to true, and saves no longer change
		-- it: nothing could end the promise.
		current[username] = type(stored) == "number" and { ver = ver; stored = stored; by = origin.host } or nil;
	end
	origin.send(st.reply(stanza));
	if previous then exchange_presence(owner, roster, previous); end
	return true;
end);

-- The gets a user may have answered here: rosteradmin_roster_get_rate a
-- second, in bursts of two seconds' worth, as rosteradmin bounds the queries
-- it answers (--query-rate).  A client looping on roster gets would
-- otherwise have every one answered at once, at the cost of every other
-- user's latency; beyond the rate it gets a cheap wait error, and is
-- answered again as soon as it slows down.  A user whose bucket is evicted
-- (the least recently asking of more than 10,000) starts full again, like
-- one who has been idle.
local get_rate = module:get_option_number("rosteradmin_roster_get_rate", 20);
if get_rate <= 0 then
	module:log("error", "rosteradmin_roster_get_rate must be above 0, not %s: using 20", tostring(get_rate));
	get_rate = 20;
end
local get_burst = math.max(1, get_rate * 2);
local get_buckets = cache.new(10000);
local too_many_text = "Too many roster requests at once: try again in a few seconds.";

local function within_get_rate(username)
	local bucket = get_buckets:get(username);
	if not bucket then
		bucket = throttle.create(get_burst, get_burst / get_rate);
		get_buckets:set(username, bucket);
	end
	return (bucket:poll(1));
end

-- An element as util.stanza's clone makes one: without the checks
-- st.stanza():tag() and :text() make of every name and value (a pattern
-- scan of each character), which cost three times the rest of building
-- an answer (a 50-contact roster: 322 microseconds with them, 85 without,
-- on the bench's machine).  An answer's values are those of a stored
-- roster rosteradmin wrote (Prosody parsed them from its XML) or read back
-- (mod_privilege's answer passed them through these very checks), unchanged
-- since: the promise ends at the roster's next save.  So the checks would
-- find nothing.  (Were a value not valid XML after all, the answer would
-- end the client's stream where the checks raised an error.)  Serialisation
-- escapes the values as for any stanza.
local function element(name, attr)
	return setmetatable({ name = name; attr = attr; tags = {} }, st.stanza_mt);
end

-- A child as add_direct_child adds it, without its check of text.
local function append(parent, child)
	parent[#parent + 1] = child;
	if type(child) ~= "string" then parent.tags[#parent.tags + 1] = child; end
end

-- The stored roster as mod_roster answers it, with rosteradmin's version.
local function roster_result(stanza, roster, ver)
	local reply, query = st.reply(stanza), element("query", { xmlns = "jabber:iq:roster"; ver = ver });
	for contact, item in pairs(roster) do
		if contact then
			local entry = element("item", { jid = contact; subscription = item.subscription; ask = item.ask;
				name = item.name });
			for group in pairs(item.groups) do
				local tag = element("group", {});
				append(tag, group);
				append(entry, tag);
			end
			append(query, entry);
		end
	end
	append(reply, query);
	return reply;
end

-- A user's roster get while rosteradmin's promise holds: answered here
-- (see the top of this file).  It runs before mod_delegation, which hooks
-- iq/bare at priority 2^32: a client's query to its own account is an
-- iq/bare event first.
module:hook("iq/bare", function(event)
	local origin, stanza = event.origin, event.stanza;
	if not event.to_self or origin.type ~= "c2s" or not origin.username then return; end
	local query = stanza.tags[1];
	if not query or query.name ~= "query" or query.attr.xmlns ~= "jabber:iq:roster" or #stanza.tags ~= 1 then
		return;
	end
	local username = origin.username;
	if stanza.attr.type == "get" then origin.rosteradmin_asked = true; end
	local promise = current[username];
	if not promise then return; end
	if stanza.attr.type == "set" then
		-- Refused by rosteradmin, but the client may show its change
		-- until it gets the whole roster again.
		current[username] = nil;
		return;
	end
	if stanza.attr.type ~= "get" then return; end
	local roster = origin.roster or rostermanager.load_roster(username, origin.host);
	if not roster or not roster[false] or roster[false].version ~= promise.stored then
		current[username] = nil;  -- saved since: rosteradmin answers
		return;
	end
	if not within_get_rate(username) then
		origin.send(st.error_reply(stanza, "wait", "resource-constraint", too_many_text));
		return true;
	end
	if query.attr.ver == promise.ver then
		origin.send(st.reply(stanza));
	else
		origin.send(roster_result(stanza, roster, promise.ver));
	end
	origin.rosteradmin_ver = promise.ver;
	shown(origin);
	if not origin.presence and not origin.rosteradmin_told then
		-- rosteradmin follows sessions with presence through mod_privilege.
		origin.rosteradmin_told = true;
		module:send(st.message({ from = origin.full_jid; to = promise.by })
			:tag("answered", { xmlns = xmlns_session; ver = promise.ver }));
	end
	return true;
end, 2^32 + 1);

module:hook("resource-unbind", function(event)
	local session = event.session;
	if entity and session.rosteradmin_asked and not session.presence then
		module:send(st.message({ from = session.full_jid; to = entity }):tag("ended", { xmlns = xmlns_session }));
	end
end);

-- The sessions that asked for their roster and sent no presence, for
-- rosteradmin after it (re)connects.
module:hook("iq-get/host/" .. xmlns_session .. ":sessions", function(event)
	local origin, stanza = event.origin, event.stanza;
	if not is_privileged(origin) then
		origin.send(st.error_reply(stanza, "auth", "forbidden"));
		return true;
	end
	entity = origin.host;
	local reply = st.reply(stanza):tag("sessions", { xmlns = xmlns_session });
	local listed = 0;
	for full, session in pairs(prosody.full_sessions) do
		if listed >= max_listed_sessions then break; end
		if session.host == module.host and session.rosteradmin_asked and not session.presence then
			reply:tag("session", { jid = full; ver = session.rosteradmin_ver }):up();
			listed = listed + 1;
		end
	end
	origin.send(reply);
	return true;
end);

-- ver='' to this host: every promise ends (rosteradmin restarted without
-- knowing what the server stores).
module:hook("iq-set/host/" .. xmlns .. ":query", function(event)
	local origin, stanza = event.origin, event.stanza;
	if origin.type ~= "component" or stanza.tags[1].attr.ver ~= "" then
		origin.send(st.error_reply(stanza, "modify", "bad-request", "Only ver='' is taken by the host"));
		return true;
	end
	current, vouched = {}, {};
	origin.send(st.reply(stanza));
	return true;
end);

module:hook_global("user-deleted", function(event)
	if event.host == module.host then current[event.username], vouched[event.username] = nil, nil; end
end);

-- A login's roster load (see the top of this file).
local load_rosters = module:get_option_boolean("rosteradmin_load_rosters", true);
local load_timeout = module:get_option_number("rosteradmin_load_timeout", 5);
-- Below module:send_iq's 256 tracked iqs, which it would evict oldest first.
local max_loads = math.min(module:get_option_number("rosteradmin_loads_in_flight", 200), 250);
local loading = {};  -- username -> the promise of its load in flight
local in_flight = 0;

local function load(username)
	local pending = loading[username];
	if pending then return pending; end
	if in_flight >= max_loads then return nil; end
	in_flight = in_flight + 1;
	local iq = st.iq({ type = "get"; from = module.host; to = entity; id = new_id() })
		:tag("query", { xmlns = xmlns }):tag("load", { user = username }):up():up();
	pending = module:send_iq(iq, nil, load_timeout):next(function (event)
		-- A bounce while rosteradmin is disconnected arrives as a reply.
		if event.stanza.attr.type ~= "result" then
			local _, condition, text = event.stanza:get_error();
			return promise.reject(tostring(condition) .. (text and (": " .. text) or ""));
		end
		vouched[username] = true;
		return true;
	end):finally(function ()
		loading[username] = nil;
		in_flight = in_flight - 1;
	end);
	loading[username] = pending;
	return pending;
end

-- Before resource bind loads the roster (sessionmanager.bind_resource, the
-- same on Prosody 0.12 and 13), in the bind iq's async runner; the lowest
-- priority, so that a module refusing the bind refuses it first.
module:hook("pre-resource-bind", function (event)
	local session = event.session;
	local username = session.username;
	if not load_rosters or not entity or vouched[username] or current[username] or not async.ready() then
		return;
	end
	local started = time_now();
	local pending = load(username);
	if not pending then
		session.log("warn", "Not waiting for rosteradmin's roster: %d loads in flight", in_flight);
		return;
	end
	local ok, err = async.wait_for(pending);
	local took = time_now() - started;
	if ok then
		session.log("debug", "rosteradmin loaded the roster in %.3f s", took);
	else
		local why = type(err) == "table" and (err.text or err.condition) or err;
		session.log("warn", "Roster not loaded by rosteradmin (%s) after %.3f s: binding with the stored roster",
			tostring(why), took);
	end
end, -1000);

-- The first iq the privileged entity sends to this host (a delegated answer,
-- a write) sets its stream's read size, once per connection.
module:hook("iq/host", function(event)
	local origin = event.origin;
	if origin.type == "component" and not origin.rosteradmin_read_size and is_privileged(origin) then
		origin.rosteradmin_read_size = read_size;
		local conn = origin.conn;
		if conn and conn.set_mode then
			conn:set_mode(read_size);
			module:log("debug", "reading %d bytes at a time from %s", read_size, origin.host);
		end
	end
end, 1000);

-- Prosody's rostermanager keeps each roster it loads for a user who is
-- offline in a cache of the host's (1,024 rosters).  Prosody itself seldom
-- loads one (a login loads the roster into the session, not the cache), but
-- the privileged entity reads and writes every user's: after rosteradmin's
-- full sync of 1,000 users, Prosody held all 1,000 rosters (15 MB of Lua
-- heap at 50 contacts each), which its garbage collector, running almost
-- without pause (Prosody's default pause is 105 %), walked again and again:
-- in a login storm every roster get then took four to seven times as long
-- as native Prosody's (docs/benchmarks.md).  So after each of the entity's
-- reads and writes, the roster of a user who is still offline is taken out
-- of the cache (saved already: the next load reads the store), including
-- one an earlier run of this module left there.
local hosts, bare_sessions = prosody.hosts, prosody.bare_sessions;

local function uncache_offline_roster(handlers, event_name, event_data)
	local handled = handlers(event_name, event_data);
	local username, host = jid.split(event_data.stanza.attr.to);
	local roster_cache = hosts[module.host].roster_cache;
	if event_data.origin.type == "component" and username and host == module.host and roster_cache then
		local owner = username .. "@" .. host;
		if not bare_sessions[owner] then roster_cache:set(owner, nil); end
	end
	return handled;
end

for _, event_name in ipairs {
	"iq-get/bare/jabber:iq:roster:query";  -- mod_privilege's read
	"iq-set/bare/jabber:iq:roster:query";  -- mod_privilege's one-item write
	"iq-set/bare/" .. xmlns .. ":query";  -- this module's write
} do
	module:wrap_event(event_name, uncache_offline_roster);
end
