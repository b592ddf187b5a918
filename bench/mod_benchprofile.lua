-- A sampling profile of Prosody's Lua, for the bench only (bench/luaprofile.py,
-- `bench.run --prosody-profile`): never load it in a deployment.
--
-- Every `benchprofile_every` VM instructions, the process CPU time since the
-- previous sample is charged to the current stack, so a share of the profile
-- is a share of Prosody's CPU (time in C functions is charged to the Lua
-- stack that runs when the next sample fires: close enough for the callers
-- that matter).  With `benchprofile_charge = "instructions"` each sample
-- charges `benchprofile_every` instructions instead: work done in Lua,
-- which does not move with the machine's load as CPU time does (but C
-- functions and the collector count nothing).  The debug library keeps a hook per coroutine, so the hook is
-- set on the main thread and on every coroutine made from now on (each
-- session's util.async runner).  It loads on a host of its own: the hook is
-- the process's, whatever host it loads on.
--
-- The bench drives it with files beside `benchprofile_file`: FILE.start
-- begins a profile afresh, FILE.stop writes it to FILE as folded stacks (one
-- line per stack, root first, frames separated by ";", then microseconds,
-- or VM instructions).

local clock, getinfo = os.clock, debug.getinfo;
local every = module:get_option_number("benchprofile_every", 10000);
local by_instructions = module:get_option_string("benchprofile_charge", "cpu") == "instructions";
local file = module:get_option_string("benchprofile_file");
local stacks, last, on = {}, clock(), false;

local function frame(info)
	return (info.short_src:match("[^/]*$")) .. ":" .. (info.name or "?") .. ":" .. tostring(info.linedefined);
end

local function sample()
	local now = clock();
	local spent = by_instructions and every or now - last;
	last = now;
	if not on then return; end
	local frames = {};
	for level = 14, 2, -1 do
		local info = getinfo(level, "Sn");
		if info then frames[#frames + 1] = frame(info); end
	end
	local key = table.concat(frames, ";");
	stacks[key] = (stacks[key] or 0) + spent;
end

debug.sethook(debug.getregistry()[1], sample, "", every);  -- the main thread
debug.sethook(sample, "", every);  -- this one, if it is not
local create = coroutine.create;
coroutine.create = function (f)
	local co = create(f);
	debug.sethook(co, sample, "", every);
	return co;
end

local function exists(path)
	local f = io.open(path);
	if f then f:close(); end
	return f ~= nil;
end

module:add_timer(0.1, function ()
	if exists(file .. ".start") then
		os.remove(file .. ".start");
		stacks, last, on = {}, clock(), true;
	elseif exists(file .. ".stop") then
		on = false;
		local out = assert(io.open(file, "w"));
		for key, spent in pairs(stacks) do
			out:write(key, " ", string.format("%d", math.floor(by_instructions and spent or spent * 1e6)), "\n");
		end
		out:close();
		os.remove(file .. ".stop");
	end
	return 0.1;
end);
