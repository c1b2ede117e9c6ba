import Dispatch
import Synchronization

/// Questions put to every live node, answered by each from its own state (Centrifugo's
/// surveys): the server API's `channels` and `connections` see the whole cluster, not only the
/// node that took the request. The question and the answers travel on the broker's control
/// channel; a node that does not answer within the timeout (it died and its announcement has
/// not expired yet) is left out of the result rather than failing it.
final class Surveys: Sendable {
    struct Pending {
        var waiting: Set<String>
        var answers: [JSONValue]
        let completion: @Sendable ([JSONValue]) -> Void
    }

    /// Surveys in flight on this node; beyond this many a new one is refused (each holds its
    /// answers until the last node replies or the timeout passes).
    static let limit = 64
    private let pending = Mutex<[String: Pending]>([:])
    let answerers = Mutex<[String: @Sendable (JSONValue) -> JSONValue]>([:])

    /// Registers a survey; false when too many are in flight.
    func start(id: String, waiting: Set<String>, completion: @escaping @Sendable ([JSONValue]) -> Void) -> Bool {
        pending.withLock { table in
            guard table.count < Self.limit else { return false }
            table[id] = Pending(waiting: waiting, answers: [], completion: completion)
            return true
        }
    }

    func answer(id: String, node: String, _ answer: JSONValue) {
        let done: Pending? = pending.withLock { table in
            guard var survey = table[id], survey.waiting.remove(node) != nil else { return nil }
            survey.answers.append(answer)
            if survey.waiting.isEmpty { return table.removeValue(forKey: id).map { _ in survey } }
            table[id] = survey
            return nil
        }
        if let done { done.completion(done.answers) }
    }

    /// Completes a survey with the answers it has (the timeout).
    func finish(id: String) {
        if let survey = pending.withLock({ $0.removeValue(forKey: id) }) { survey.completion(survey.answers) }
    }
}

extension Node {
    /// Asks every live node (this one included) `kind` with `params`; completes with each
    /// answering node's answer. With one node (or the embedded broker) no message leaves it.
    public func survey(_ kind: String, params: JSONValue, timeout: Double = 1,
                       completion: @escaping @Sendable (Result<[JSONValue], ProtocolError>) -> Void) {
        guard let local = surveys.answerers.withLock({ $0[kind] }) else {
            completion(.failure(.internal.with(message: "unknown survey \(kind)")))
            return
        }
        broker.nodes { [self] result in
            guard case .success(let nodes) = result else {
                completion(result.map { _ in [] })
                return
            }
            let others = Set(nodes.map(\.uid)).subtracting([uid])
            guard !others.isEmpty else {
                completion(.success([local(params)]))
                return
            }
            let id = RandomID.make(length: 16)
            let started = surveys.start(id: id, waiting: others.union([uid])) { answers in completion(.success(answers)) }
            guard started else {
                completion(.failure(.internal.with(message: "too many surveys in flight")))
                return
            }
            publishControl(["op": "survey", "kind": .string(kind), "id": .string(id), "from": .string(uid), "params": params])
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { [surveys] in surveys.finish(id: id) }
        }
    }

    /// What this node answers to surveys of `kind`.
    public func registerSurvey(_ kind: String, answer: @escaping @Sendable (JSONValue) -> JSONValue) {
        surveys.answerers.withLock { $0[kind] = answer }
    }

    func registerSurveyControl() {
        registerControl("survey") { [unowned self] command in
            guard let kind = command["kind"]?.stringValue, let id = command["id"]?.stringValue,
                  let from = command["from"]?.stringValue,
                  let answer = surveys.answerers.withLock({ $0[kind] }) else { return }
            let reply: JSONValue = ["op": "survey_reply", "id": .string(id), "to": .string(from), "node": .string(uid),
                                    "answer": answer(command["params"] ?? .null)]
            if from == uid { handleControl(reply) } else { publishControl(reply) }
        }
        registerControl("survey_reply") { [unowned self] command in
            guard command["to"]?.stringValue == uid, let id = command["id"]?.stringValue,
                  let node = command["node"]?.stringValue else { return }
            surveys.answer(id: id, node: node, command["answer"] ?? .null)
        }
        registerSurvey("channels") { [unowned self] params in
            .object(channels(matching: params["pattern"]?.stringValue ?? "").map { ($0.0, .int(Int64($0.1))) })
        }
        registerSurvey("connections") { [unowned self] params in
            .object(connections(user: params["user"]?.stringValue))
        }
    }
}
