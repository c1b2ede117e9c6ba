/// A subscriber's server-side filter over publication tags (Centrifugo's `tf`, as the SDKs'
/// `Filter` helpers build it): comparisons on one tag combined with and/or/not. A filtered
/// subscriber gets only the publications that match, live and in recovery.
public indirect enum TagFilter: Sendable, Equatable {
    case all([TagFilter])
    case any([TagFilter])
    case not(TagFilter)
    case compare(key: String, Comparison)

    public enum Comparison: Sendable, Equatable {
        case eq(String), neq(String)
        case isIn([String]), notIn([String])
        case exists, notExists
        case startsWith(String), endsWith(String), contains(String)
        /// Numeric comparisons: the tag and the value are read as numbers.
        case gt(Double), gte(Double), lt(Double), lte(Double)
    }

    /// Bounds on a filter, so evaluating one per publication per subscriber stays cheap.
    public static let maxNodes = 64
    public static let maxDepth = 8

    /// Reads a filter from its JSON form; the message says what is wrong.
    public init(json: JSONValue) throws(ProtocolError) {
        var nodes = 0
        self = try Self.parse(json.parsed, depth: 0, nodes: &nodes)
    }

    private static func parse(_ json: JSONValue, depth: Int, nodes: inout Int) throws(ProtocolError) -> TagFilter {
        nodes += 1
        guard nodes <= maxNodes else { throw bad("filter has more than \(maxNodes) nodes") }
        guard depth < maxDepth else { throw bad("filter nested deeper than \(maxDepth) levels") }
        guard json.objectValue != nil else { throw bad("filter node must be an object") }
        let op = json["op"]?.stringValue ?? ""
        if !op.isEmpty {
            guard let children = json["nodes"]?.parsed.arrayValue, !children.isEmpty else { throw bad("filter op '\(op)' needs nodes") }
            var parsed: [TagFilter] = []
            for child in children { parsed.append(try parse(child.parsed, depth: depth + 1, nodes: &nodes)) }
            switch op {
            case "and": return .all(parsed)
            case "or": return .any(parsed)
            case "not":
                guard parsed.count == 1 else { throw bad("filter op 'not' takes exactly one node") }
                return .not(parsed[0])
            default: throw bad("unknown filter op '\(op)'")
            }
        }
        guard let key = json["key"]?.stringValue, !key.isEmpty else { throw bad("filter comparison needs a key") }
        let cmp = json["cmp"]?.stringValue ?? ""
        let val = json["val"]?.stringValue
        func value() throws(ProtocolError) -> String {
            guard let val else { throw bad("filter comparison '\(cmp)' needs val") }
            return val
        }
        func values() throws(ProtocolError) -> [String] {
            guard let vals = json["vals"]?.parsed.arrayValue, !vals.isEmpty else { throw bad("filter comparison '\(cmp)' needs vals") }
            var strings: [String] = []
            for v in vals {
                guard let s = v.stringValue else { throw bad("filter vals must be strings") }
                strings.append(s)
            }
            return strings
        }
        func number() throws(ProtocolError) -> Double {
            guard let n = Double(try value()), n.isFinite else { throw bad("filter comparison '\(cmp)' needs a numeric val") }
            return n
        }
        let comparison: Comparison
        switch cmp {
        case "eq": comparison = .eq(try value())
        case "neq": comparison = .neq(try value())
        case "in": comparison = .isIn(try values())
        case "nin": comparison = .notIn(try values())
        case "ex": comparison = .exists
        case "nex": comparison = .notExists
        case "sw": comparison = .startsWith(try value())
        case "ew": comparison = .endsWith(try value())
        case "ct": comparison = .contains(try value())
        case "gt": comparison = .gt(try number())
        case "gte": comparison = .gte(try number())
        case "lt": comparison = .lt(try number())
        case "lte": comparison = .lte(try number())
        default: throw bad("unknown filter comparison '\(cmp)'")
        }
        return .compare(key: key, comparison)
    }

    private static func bad(_ message: String) -> ProtocolError { ProtocolError.badRequest.with(message: message) }

    /// Whether a publication with these tags passes.
    public func matches(_ tags: [(String, String)]) -> Bool {
        switch self {
        case .all(let nodes): return nodes.allSatisfy { $0.matches(tags) }
        case .any(let nodes): return nodes.contains { $0.matches(tags) }
        case .not(let node): return !node.matches(tags)
        case .compare(let key, let comparison):
            let tag = tags.first { $0.0 == key }?.1
            switch comparison {
            case .exists: return tag != nil
            case .notExists: return tag == nil
            case .notIn(let values): return tag.map { !values.contains($0) } ?? true
            case .neq(let value): return tag != value
            default: break
            }
            guard let tag else { return false }
            switch comparison {
            case .eq(let value): return tag == value
            case .isIn(let values): return values.contains(tag)
            case .startsWith(let value): return tag.hasPrefix(value)
            case .endsWith(let value): return tag.hasSuffix(value)
            case .contains(let value): return value.isEmpty || tag.contains(value)
            case .gt(let n): return Double(tag).map { $0 > n } ?? false
            case .gte(let n): return Double(tag).map { $0 >= n } ?? false
            case .lt(let n): return Double(tag).map { $0 < n } ?? false
            case .lte(let n): return Double(tag).map { $0 <= n } ?? false
            case .exists, .notExists, .notIn, .neq: return false  // answered above
            }
        }
    }
}
