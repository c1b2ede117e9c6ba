import Channels

/// The publication tags-filter parser and evaluator (subscribe `tf`).
///
/// Properties: any JSON the parser reads is refused with 107 or accepted; an accepted filter
/// evaluates on input-chosen tags without trapping, `not` inverts it, and `and`/`or` of a filter
/// with itself agree with the filter.
enum TagFilterFuzz {
    static func check(_ input: [UInt8]) {
        guard let json = try? JSONParser.parse(input) else { return }
        let filter: TagFilter
        do {
            filter = try TagFilter(json: json)
        } catch {
            invariant(error.code == ProtocolError.badRequest.code, "filter refused with code \(error.code)")
            return
        }
        var random = InputRandom(input)
        let keys = ["ticker", "price", "source", "a", "b", ""]
        var tags: [(String, String)] = []
        for _ in 0..<random.below(5) {
            tags.append((keys[random.below(keys.count)], String(random.below(300))))
        }
        let verdict = filter.matches(tags)
        invariant(TagFilter.not(filter).matches(tags) == !verdict, "not does not invert")
        invariant(TagFilter.all([filter, filter]).matches(tags) == verdict, "and of itself differs")
        invariant(TagFilter.any([filter, filter]).matches(tags) == verdict, "or of itself differs")
    }
}
