import Channels
import Store

/// Analytics counters and a word index for the records of a `MessageIndex` (seed 003's chat
/// messages), kept by the same Lua script that writes or deletes the record, so they never
/// disagree with the records the hub wrote. Layout (shard 0, beside the records):
///
///   hub:an:docs           hash  record key → the facts it was counted with (JSON), to take it out exactly
///   hub:an:all            hash  all → tally "messages user assistant response_µs responses"
///   hub:an:conv           hash  ["user","conversation"] → tally of the conversation
///   hub:an:user           hash  user → user messages
///   hub:an:day            hash  day → tally of the day (days since 1970-01-01, UTC)
///   hub:an:days           zset  the days with a message
///   hub:an:dc:<day>       hash  conversation → tally of it that day
///   hub:an:du:<day>       hash  user → user messages that day
///   hub:an:cdays:<conv>   zset  days the conversation has a message (score = day)
///   hub:an:cday:<day>     zset  conversations with a message that day, scored by their previous such day
///   hub:an:udays:<user>, hub:an:uday:<day>   the same for users' own messages
///   hub:an:time           zset  record key by created_at (the partial days at a window's ends)
///   hub:an:ct:<conv>      zset  the conversation's record keys by created_at (first/last in a window)
///   hub:ti:<word>         zset  record key by the word's bm25 term weight; hub:ti:stats hash docs, tokens
///   hub:an:version        string  set once a start has backfilled everything written before
///
/// Distinct conversations (or users) in whole days d1…d2 are counted without listing them: one
/// is counted on the first day of the range it is active, i.e. where its previous active day
/// is before d1, so the count is Σ over the days of ZCOUNT hub:an:cday:<d> -inf (d1.
/// The scripts touch keys they compute (per day, per word), which a single Redis allows.
extension RedisRecordStore {
    static let indexVersion = "1"
    static let versionKey = "hub:an:version"

    /// Shared Lua: tallies, day links, and adding (s = 1) or taking out (s = -1) one message.
    static let indexLibrary = """
        local NONE = -1e15
        local function tally_parse(v)
          local t = {0, 0, 0, 0, 0}
          if v then
            local i = 1
            for n in string.gmatch(v, '%S+') do t[i] = tonumber(n); i = i + 1 end
          end
          return t
        end
        local function tally_text(t) return string.format('%.0f %.0f %.0f %.0f %.0f', t[1], t[2], t[3], t[4], t[5]) end
        local function bump(key, field, f, s)
          local t = tally_parse(redis.call('hget', key, field))
          local was = t[1]
          t[1] = t[1] + s
          if f.r == 'user' then t[2] = t[2] + s end
          if f.r == 'assistant' then
            t[3] = t[3] + s
            if f.rt >= 0 then t[4] = t[4] + s * f.rt; t[5] = t[5] + s end
          end
          if t[1] <= 0 then redis.call('hdel', key, field) else redis.call('hset', key, field, tally_text(t)) end
          return was
        end
        local function count(key, field, s)
          local was = tonumber(redis.call('hget', key, field) or '0')
          if was + s <= 0 then redis.call('hdel', key, field) else redis.call('hset', key, field, was + s) end
          return was
        end
        -- (id, day) became active (s = 1) or inactive (s = -1): keep every active day scored by the previous one
        local function link(kind, id, day, s)
          local days = 'hub:an:' .. kind .. 'days:' .. id
          local prev = redis.call('zrevrangebyscore', days, '(' .. day, '-inf', 'LIMIT', 0, 1)[1]
          local nxt = redis.call('zrangebyscore', days, '(' .. day, '+inf', 'LIMIT', 0, 1)[1]
          if s > 0 then
            redis.call('zadd', days, day, day)
            redis.call('zadd', 'hub:an:' .. kind .. 'day:' .. day, prev or NONE, id)
            if nxt then redis.call('zadd', 'hub:an:' .. kind .. 'day:' .. nxt, day, id) end
          else
            redis.call('zrem', days, day)
            redis.call('zrem', 'hub:an:' .. kind .. 'day:' .. day, id)
            if nxt then redis.call('zadd', 'hub:an:' .. kind .. 'day:' .. nxt, prev or NONE, id) end
          end
        end
        local function apply(key, f, s, raw)
          local day = string.format('%.0f', f.d)
          bump('hub:an:all', 'all', f, s)
          bump('hub:an:conv', f.c, f, s)
          local dayWas = bump('hub:an:day', day, f, s)
          if s > 0 and dayWas == 0 then redis.call('zadd', 'hub:an:days', day, day) end
          if s < 0 and dayWas == 1 then redis.call('zrem', 'hub:an:days', day) end
          local convWas = bump('hub:an:dc:' .. day, f.c, f, s)
          if s > 0 and convWas == 0 then link('c', f.c, day, 1) end
          if s < 0 and convWas == 1 then link('c', f.c, day, -1) end
          if f.r == 'user' then
            count('hub:an:user', f.u, s)
            local userWas = count('hub:an:du:' .. day, f.u, s)
            if s > 0 and userWas == 0 then link('u', f.u, day, 1) end
            if s < 0 and userWas == 1 then link('u', f.u, day, -1) end
          end
          local docs = tonumber(redis.call('hget', 'hub:ti:stats', 'docs') or '0')
          local tokens = tonumber(redis.call('hget', 'hub:ti:stats', 'tokens') or '0')
          if s > 0 then
            redis.call('zadd', 'hub:an:time', f.t, key)
            redis.call('zadd', 'hub:an:ct:' .. f.c, f.t, key)
            redis.call('hset', 'hub:an:docs', key, raw)
            -- bm25's term weight with the mean length as it is now (k1 = 1.2, b = 0.75, as FTS5)
            local mean = (tokens + f.l) / (docs + 1)
            if mean <= 0 then mean = 1 end
            for w, tf in pairs(f.w) do
              redis.call('zadd', 'hub:ti:' .. w, tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * f.l / mean)), key)
            end
          else
            redis.call('zrem', 'hub:an:time', key)
            redis.call('zrem', 'hub:an:ct:' .. f.c, key)
            redis.call('hdel', 'hub:an:docs', key)
            for w, _ in pairs(f.w) do redis.call('zrem', 'hub:ti:' .. w, key) end
          end
          redis.call('hincrby', 'hub:ti:stats', 'docs', s)
          redis.call('hincrby', 'hub:ti:stats', 'tokens', s * f.l)
        end
        local function unapply(key)
          local old = redis.call('hget', 'hub:an:docs', key)
          if old then apply(key, cjson.decode(old), -1, old) end
        end

        """

    /// KEYS: record, hub:keys. ARGV: value, facts ('' when the value is no message).
    static let indexedPutScript = RedisScript(indexLibrary + """
        unapply(KEYS[1])
        redis.call('set', KEYS[1], ARGV[1])
        redis.call('zadd', KEYS[2], 0, KEYS[1])
        if ARGV[2] ~= '' then apply(KEYS[1], cjson.decode(ARGV[2]), 1, ARGV[2]) end
        return 1
        """)

    /// KEYS: record, hub:keys.
    static let indexedDeleteScript = RedisScript(indexLibrary + """
        unapply(KEYS[1])
        redis.call('zrem', KEYS[2], KEYS[1])
        return redis.call('del', KEYS[1])
        """)

    /// KEYS: record, hub:keys. ARGV: has expected, expected, has new, new, facts of new ('' when none).
    static let indexedCASScript = RedisScript(indexLibrary + """
        local current = redis.call('get', KEYS[1])
        local expected = ARGV[1] == '1' and ARGV[2] or false
        if current ~= expected then return 0 end
        unapply(KEYS[1])
        if ARGV[3] == '1' then
          redis.call('set', KEYS[1], ARGV[4])
          redis.call('zadd', KEYS[2], 0, KEYS[1])
          if ARGV[5] ~= '' then apply(KEYS[1], cjson.decode(ARGV[5]), 1, ARGV[5]) end
        else
          redis.call('del', KEYS[1])
          redis.call('zrem', KEYS[2], KEYS[1])
        end
        return 1
        """)

    /// ARGV: record key, facts, record key, facts, … Counts each record not counted yet that
    /// still exists (a delete since it was listed wins; a write since then counted itself).
    static let backfillScript = RedisScript(indexLibrary + """
        local added = 0
        for i = 1, #ARGV, 2 do
          local key = ARGV[i]
          if redis.call('exists', key) == 1 and redis.call('hexists', 'hub:an:docs', key) == 0 then
            apply(key, cjson.decode(ARGV[i + 1]), 1, ARGV[i + 1])
            added = added + 1
          end
        end
        return added
        """)

    /// ARGV: start ('' = open), end ('' = open), rows ('1'). Returns total tally, conversations,
    /// users, then per conversation when asked: its field, tally, first, last.
    static let windowScript = RedisScript("""
        local NONE = -1e15
        local function tally_parse(v)
          local t = {0, 0, 0, 0, 0}
          if v then
            local i = 1
            for n in string.gmatch(v, '%S+') do t[i] = tonumber(n); i = i + 1 end
          end
          return t
        end
        local function tally_text(t) return string.format('%.0f %.0f %.0f %.0f %.0f', t[1], t[2], t[3], t[4], t[5]) end
        local function add(t, u) for i = 1, 5 do t[i] = t[i] + u[i] end end
        local s = tonumber(ARGV[1])
        local e = tonumber(ARGV[2])
        local wantRows = ARGV[3] == '1'
        local total = {0, 0, 0, 0, 0}
        local nconv, nusers = 0, 0
        local rows, order = {}, {}
        local function row(c)
          if not rows[c] then rows[c] = {0, 0, 0, 0, 0}; order[#order + 1] = c end
          return rows[c]
        end
        if not s and not e then
          total = tally_parse(redis.call('hget', 'hub:an:all', 'all'))
          nconv = redis.call('hlen', 'hub:an:conv')
          nusers = redis.call('hlen', 'hub:an:user')
          if wantRows then
            local all = redis.call('hgetall', 'hub:an:conv')
            for i = 1, #all, 2 do add(row(all[i]), tally_parse(all[i + 1])) end
          end
        else
          local F1 = s and math.ceil(s / 86400) or nil
          local F2 = e and (math.floor(e / 86400) - 1) or nil
          local edges = {}
          local days = {}
          if F1 and F2 and F1 > F2 then
            edges[1] = {s, e}
          else
            if s and s < F1 * 86400 then edges[#edges + 1] = {s, F1 * 86400} end
            if e and (F2 + 1) * 86400 < e then edges[#edges + 1] = {(F2 + 1) * 86400, e} end
            days = redis.call('zrangebyscore', 'hub:an:days', F1 and string.format('%.0f', F1) or '-inf', F2 and string.format('%.0f', F2) or '+inf')
          end
          local first, last
          if #days > 0 then
            first = tonumber(days[1])
            last = tonumber(days[#days])
            local before = '(' .. string.format('%.0f', first)
            for _, d in ipairs(days) do
              add(total, tally_parse(redis.call('hget', 'hub:an:day', d)))
              nconv = nconv + redis.call('zcount', 'hub:an:cday:' .. d, '-inf', before)
              nusers = nusers + redis.call('zcount', 'hub:an:uday:' .. d, '-inf', before)
              if wantRows then
                for _, c in ipairs(redis.call('zrangebyscore', 'hub:an:cday:' .. d, '-inf', before)) do
                  local r = row(c)
                  -- its days in the range, or its whole tally less the days outside, whichever reads fewer
                  local cdays = 'hub:an:cdays:' .. c
                  local inside = redis.call('zcount', cdays, first, last)
                  if inside <= redis.call('zcard', cdays) - inside then
                    for _, cd in ipairs(redis.call('zrangebyscore', cdays, first, last)) do
                      add(r, tally_parse(redis.call('hget', 'hub:an:dc:' .. cd, c)))
                    end
                  else
                    add(r, tally_parse(redis.call('hget', 'hub:an:conv', c)))
                    local outside = redis.call('zrangebyscore', cdays, '-inf', '(' .. first)
                    for _, cd in ipairs(redis.call('zrangebyscore', cdays, '(' .. last, '+inf')) do outside[#outside + 1] = cd end
                    for _, cd in ipairs(outside) do
                      local t = tally_parse(redis.call('hget', 'hub:an:dc:' .. cd, c))
                      for i = 1, 5 do r[i] = r[i] - t[i] end
                    end
                  end
                end
              end
            end
          end
          local function inDays(kind, id)
            return first ~= nil and redis.call('zcount', 'hub:an:' .. kind .. 'days:' .. id, first, last) > 0
          end
          local seenConv, seenUser = {}, {}
          for _, edge in ipairs(edges) do
            for _, key in ipairs(redis.call('zrangebyscore', 'hub:an:time', string.format('%.17g', edge[1]), '(' .. string.format('%.17g', edge[2]))) do
              local raw = redis.call('hget', 'hub:an:docs', key)
              if raw then
                local f = cjson.decode(raw)
                local one = {1, f.r == 'user' and 1 or 0, f.r == 'assistant' and 1 or 0, 0, 0}
                if f.r == 'assistant' and f.rt >= 0 then one[4] = f.rt; one[5] = 1 end
                add(total, one)
                if wantRows then add(row(f.c), one) end
                if not seenConv[f.c] then
                  seenConv[f.c] = true
                  if not inDays('c', f.c) then nconv = nconv + 1 end
                end
                if f.r == 'user' and not seenUser[f.u] then
                  seenUser[f.u] = true
                  if not inDays('u', f.u) then nusers = nusers + 1 end
                end
              end
            end
          end
        end
        local out = {tally_text(total), nconv, nusers}
        local lo = s and string.format('%.17g', s) or '-inf'
        local hi = e and ('(' .. string.format('%.17g', e)) or '+inf'
        for _, c in ipairs(order) do
          local a = redis.call('zrangebyscore', 'hub:an:ct:' .. c, lo, hi, 'WITHSCORES', 'LIMIT', 0, 1)
          local b = redis.call('zrevrangebyscore', 'hub:an:ct:' .. c, hi, lo, 'WITHSCORES', 'LIMIT', 0, 1)
          out[#out + 1] = c
          out[#out + 1] = tally_text(rows[c])
          out[#out + 1] = a[2] or ''
          out[#out + 1] = b[2] or ''
        end
        return out
        """)

    /// ARGV: conversation field. Returns tally, first, last (nil when it has no message).
    static let conversationScript = RedisScript("""
        local t = redis.call('hget', 'hub:an:conv', ARGV[1])
        if not t then return false end
        local a = redis.call('zrange', 'hub:an:ct:' .. ARGV[1], 0, 0, 'WITHSCORES')
        local b = redis.call('zrange', 'hub:an:ct:' .. ARGV[1], -1, -1, 'WITHSCORES')
        return {t, a[2] or '', b[2] or ''}
        """)

    /// bm25 as SQLite FTS5 computes it (idf = ln((N − n + 0.5) / (n + 0.5)), at least 1e-6;
    /// k1 = 1.2, b = 0.75) over the `ARGV[1]` best candidates. Like FTS5 it reads every posting
    /// of the query's words (in ZUNIONSTORE, one temporary key), so its cost grows with the
    /// messages holding them, not with the archive. ARGV: how many, words…. Returns key,
    /// score, value, best first.
    static let searchScript = RedisScript("""
        local limit = tonumber(ARGV[1])
        local N = tonumber(redis.call('hget', 'hub:ti:stats', 'docs') or '0')
        local tokens = tonumber(redis.call('hget', 'hub:ti:stats', 'tokens') or '0')
        if N <= 0 or limit <= 0 then return {} end
        local mean = tokens / N
        if mean <= 0 then mean = 1 end
        local idf, lists, weights = {}, {}, {}
        for i = 2, #ARGV do
          local w = ARGV[i]
          local n = redis.call('zcard', 'hub:ti:' .. w)
          if n > 0 and not idf[w] then
            local v = math.log((N - n + 0.5) / (n + 0.5))
            if v <= 0 then v = 1e-6 end
            idf[w] = v
            lists[#lists + 1] = 'hub:ti:' .. w
            weights[#weights + 1] = string.format('%.17g', v)
          end
        end
        if #lists == 0 then return {} end
        -- Candidates: the best by the stored weights (bm25 with the mean length at write time),
        -- summed over the words as FTS5 sums them; then scored exactly with today's mean.
        local candidates
        if #lists == 1 then
          candidates = redis.call('zrevrange', lists[1], 0, limit - 1)
        else
          local args = {'hub:ti:query', #lists}
          for _, l in ipairs(lists) do args[#args + 1] = l end
          args[#args + 1] = 'WEIGHTS'
          for _, w in ipairs(weights) do args[#args + 1] = w end
          redis.call('zunionstore', unpack(args))
          candidates = redis.call('zrevrange', 'hub:ti:query', 0, limit - 1)
          redis.call('del', 'hub:ti:query')
        end
        local scored = {}
        for _, key in ipairs(candidates) do
          local raw = redis.call('hget', 'hub:an:docs', key)
          if raw then
            local f = cjson.decode(raw)
            local score = 0
            for w, v in pairs(idf) do
              local tf = f.w[w]
              if tf then score = score + v * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * f.l / mean)) end
            end
            scored[#scored + 1] = {key, score}
          end
        end
        table.sort(scored, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] > b[1] end)
        local out = {}
        for i = 1, math.min(limit, #scored) do
          local value = redis.call('get', scored[i][1])
          if value then
            out[#out + 1] = scored[i][1]
            out[#out + 1] = string.format('%.17g', scored[i][2])
            out[#out + 1] = value
          end
        end
        return out
        """)

    /// The facts as the scripts read them: d day, c conversation field, u user, r role,
    /// t created_at, rt response µs (−1 none), l length, w word → count.
    static func encode(_ facts: MessageFacts) -> [UInt8] {
        JSONWriter.bytes([
            "d": .int(facts.day), "c": .string(conversationField(user: facts.userID, conversation: facts.conversationID)),
            "u": .string(facts.userID), "r": .string(facts.role), "t": .double(facts.createdAt),
            "rt": .int(facts.responseTime.map { Int64(($0 * 1_000_000).rounded()) } ?? -1), "l": .int(Int64(facts.length)),
            "w": .object(facts.terms.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }),
        ])
    }

    /// A conversation as a hash field and key part: JSON `["user","conversation"]`, which no
    /// pair of ids can make ambiguous.
    static func conversationField(user: String, conversation: String) -> String {
        JSONWriter.string(.array([.string(user), .string(conversation)]))
    }

    func isIndexed(_ key: String) -> Bool { messageIndex.map { key.hasPrefix($0.prefix) } ?? false }

    func factsBytes(_ key: String, _ value: [UInt8]) -> [UInt8] {
        guard let index = messageIndex, let facts = index.facts(Record(key: key, value: value)) else { return [] }
        return Self.encode(facts)
    }

    /// Counts what was written before the counters existed (records from an older hub, or
    /// written by other tools in the hub's layout), once: skipped when `hub:an:version` says
    /// a start already did. Queries walk the records until this completes.
    /// Does nothing when ready or already under way; a failure (Redis not reachable yet) leaves
    /// it to be called again.
    public func prepareMessageIndex(completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        guard let index = messageIndex, !ready.load(ordering: .acquiring),
              preparing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        let finish: @Sendable (Result<Int, StoreError>) -> Void = { [self] result in
            preparing.store(false, ordering: .releasing)
            completion(result)
        }
        shard.send(["GET", Self.versionKey]) { [self] reply in
            if reply.isError { finish(.failure(Self.failure(reply))); return }
            if reply.text == Self.indexVersion {
                ready.store(true, ordering: .releasing)
                finish(.success(0))
                return
            }
            backfill(index, after: nil, added: 0, completion: finish)
        }
    }

    private func backfill(_ index: MessageIndex, after: String?, added: Int,
                          completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        let page = 500
        list(prefix: index.prefix, after: after, limit: page) { [self] result in
            guard case .success(let records) = result else {
                if case .failure(let error) = result { completion(.failure(error)) }
                return
            }
            let arguments = records.flatMap { record -> [[UInt8]] in
                guard let facts = index.facts(record) else { return [] }
                return [Array(record.key.utf8), Self.encode(facts)]
            }
            let next: @Sendable (Int) -> Void = { [self] count in
                if records.count == page, let last = records.last {
                    backfill(index, after: last.key, added: added + count, completion: completion)
                    return
                }
                shard.send(["SET", Self.versionKey, Self.indexVersion]) { [self] reply in
                    guard !reply.isError else { completion(.failure(StoreError("store: cannot mark the index version"))); return }
                    ready.store(true, ordering: .releasing)
                    completion(.success(added + count))
                }
            }
            guard !arguments.isEmpty else { next(0); return }
            Self.backfillScript.run(on: shard, keys: [[UInt8]](), arguments: arguments) { reply in
                guard let count = reply.int else {
                    completion(.failure(StoreError("store: backfill failed: \(reply)")))
                    return
                }
                next(Int(count))
            }
        }
    }

    static func tally(_ text: String?, first: String? = nil, last: String? = nil) -> MessageTally {
        var tally = MessageTally()
        let numbers = (text ?? "").split(separator: " ").map { Int64($0) ?? 0 }
        if numbers.count == 5 {
            tally.messages = Int(numbers[0])
            tally.userMessages = Int(numbers[1])
            tally.assistantMessages = Int(numbers[2])
            tally.responseMicros = numbers[3]
            tally.responseCount = Int(numbers[4])
        }
        tally.first = first.flatMap(Double.init)
        tally.last = last.flatMap(Double.init)
        return tally
    }
}

extension RedisRecordStore: MessageAnalytics {
    public var messageIndexReady: Bool { messageIndex != nil && ready.load(ordering: .acquiring) }

    public func tally(start: Double?, end: Double?, rows: Bool, completion: @escaping @Sendable (Result<WindowTally, StoreError>) -> Void) {
        Self.windowScript.run(on: shard, keys: [[UInt8]](), arguments: [
            Array((start.map { "\($0)" } ?? "").utf8), Array((end.map { "\($0)" } ?? "").utf8), Array((rows ? "1" : "0").utf8),
        ]) { reply in
            guard case .array(let items) = reply, items.count >= 3, let conversations = items[1].int, let users = items[2].int else {
                completion(.failure(StoreError("store: unexpected analytics reply")))
                return
            }
            var window = WindowTally()
            window.total = Self.tally(items[0].text)
            window.conversations = Int(conversations)
            window.users = Int(users)
            var index = 3
            while index + 3 < items.count {
                if let field = items[index].text, let pair = try? JSONParser.parse(field), let ids = pair.arrayValue, ids.count == 2,
                   let user = ids[0].stringValue, let conversation = ids[1].stringValue {
                    window.rows.append((user, conversation, Self.tally(items[index + 1].text, first: items[index + 2].text, last: items[index + 3].text)))
                }
                index += 4
            }
            completion(.success(window))
        }
    }

    public func tally(userID: String, conversationID: String, completion: @escaping @Sendable (Result<MessageTally?, StoreError>) -> Void) {
        Self.conversationScript.run(on: shard, keys: [[UInt8]](), arguments: [Array(Self.conversationField(user: userID, conversation: conversationID).utf8)]) { reply in
            switch reply {
            case .null: completion(.success(nil))
            case .array(let items) where items.count == 3:
                completion(.success(Self.tally(items[0].text, first: items[1].text, last: items[2].text)))
            default: completion(.failure(StoreError("store: unexpected analytics reply")))
            }
        }
    }
}

extension RedisRecordStore: TextSearchable {
    /// The word index answers only once it covers every message (see `prepareMessageIndex`).
    public var textIndex: TextIndex? { messageIndexReady ? wordIndex : nil }

    public func search(words: [String], limit: Int, completion: @escaping @Sendable (Result<[(Record, Double)], StoreError>) -> Void) {
        guard !words.isEmpty else { completion(.success([])); return }
        Self.searchScript.run(on: shard, keys: [[UInt8]](), arguments: [Array(String(max(0, limit)).utf8)] + words.map { Array($0.utf8) }) { reply in
            guard case .array(let items) = reply else { completion(.failure(StoreError("store: unexpected search reply"))); return }
            var found: [(Record, Double)] = []
            var index = 0
            while index + 2 < items.count {
                if let key = items[index].text, let score = items[index + 1].text.flatMap(Double.init), case .string(let value) = items[index + 2] {
                    found.append((Record(key: key, value: value), score))
                }
                index += 3
            }
            completion(.success(found))
        }
    }
}
