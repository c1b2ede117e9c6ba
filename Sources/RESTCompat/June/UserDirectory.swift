import Channels
import Dispatch
import Store

/// A June user as stored: `june:user:<user_id>`; the user name maps to the id through
/// `june:username:<lower-cased name>`, claimed with compare-and-set so two creations of one
/// name cannot both succeed. The user id is the user name (it names `/ws/{user_id}`).
public struct JuneUser: Sendable, Equatable {
    public var userID: String
    public var username: String
    public var email: String?
    public var role: String
    public var status: String
    public var createdAt: Double
    public var passwordHash: String?

    public static let roles = ["user", "admin", "moderator"]
    public static let statuses = ["active", "blocked", "inactive"]

    /// The record; `password_hash` never leaves the store.
    var record: JSONValue {
        .compact([
            ("user_id", .string(userID)), ("username", .string(username)), ("email", email.map { .string($0) }),
            ("role", .string(role)), ("status", .string(status)), ("created_at", .double(createdAt)),
            ("password_hash", passwordHash.map { .string($0) }),
        ])
    }

    /// What the admin API shows.
    public var publicJSON: JSONValue {
        [
            "user_id": .string(userID), "username": .string(username), "email": email.map { .string($0) } ?? .null,
            "role": .string(role), "status": .string(status), "created_at": .string(ISOTime.string(createdAt)),
        ]
    }

    init?(record: JSONValue) {
        guard let id = record["user_id"]?.stringValue, let name = record["username"]?.stringValue else { return nil }
        userID = id
        username = name
        email = record["email"]?.stringValue
        role = record["role"]?.stringValue ?? "user"
        status = record["status"]?.stringValue ?? "active"
        createdAt = record["created_at"]?.doubleValue ?? 0
        passwordHash = record["password_hash"]?.stringValue
    }

    public init(userID: String, username: String, email: String?, role: String, status: String, createdAt: Double, passwordHash: String?) {
        self.userID = userID
        self.username = username
        self.email = email
        self.role = role
        self.status = status
        self.createdAt = createdAt
        self.passwordHash = passwordHash
    }
}

/// Users in the record store, shared by every node. Password hashing runs on a global
/// queue, never on a service thread.
public final class UserDirectory: Sendable {
    let store: any RecordStore
    let node: Node
    public let passwordIterations: Int

    public init(store: any RecordStore, node: Node, passwordIterations: Int = PasswordHash.defaultIterations) {
        self.store = store
        self.node = node
        self.passwordIterations = passwordIterations
    }

    static func userKey(_ id: String) -> String { "june:user:" + id }
    static func nameKey(_ name: String) -> String { "june:username:" + name.lowercased() }
    static func tombstoneKey(_ id: String) -> String { "june:user-deleted:" + id }

    public func user(id: String, completion: @escaping @Sendable (Result<JuneUser?, StoreError>) -> Void) {
        store.get(Self.userKey(id)) { result in
            completion(result.map { bytes in bytes.flatMap { try? JSONParser.parse($0) }.flatMap(JuneUser.init(record:)) })
        }
    }

    public func user(named name: String, completion: @escaping @Sendable (Result<JuneUser?, StoreError>) -> Void) {
        store.get(Self.nameKey(name)) { [self] result in
            switch result {
            case .failure(let error): completion(.failure(error))
            case .success(nil): completion(.success(nil))
            case .success(let bytes?): user(id: String(decoding: bytes, as: UTF8.self), completion: completion)
            }
        }
    }

    /// Checks a user name and password. Completes with the user when they match (whatever
    /// the status: the caller decides what a blocked user gets), nil otherwise.
    public func authenticate(username: String, password: String, completion: @escaping @Sendable (Result<JuneUser?, StoreError>) -> Void) {
        user(named: username) { [passwordIterations] result in
            DispatchQueue.global().async {
                switch result {
                case .failure(let error): completion(.failure(error))
                case .success(let user):
                    guard let user, let hash = user.passwordHash else {
                        PasswordHash.verifyNothing(password, iterations: passwordIterations)
                        completion(.success(nil))
                        return
                    }
                    completion(.success(PasswordHash.verify(password, against: hash) ? user : nil))
                }
            }
        }
    }

    public enum CreateError: Error, Sendable { case exists, store(StoreError) }

    /// Creates a user; the password is hashed off the service threads.
    public func create(username: String, email: String?, password: String?, role: String, status: String,
                       completion: @escaping @Sendable (Result<JuneUser, CreateError>) -> Void) {
        DispatchQueue.global().async { [self] in
            let hash = password.map { PasswordHash.make($0, iterations: passwordIterations) }
            let user = JuneUser(userID: username, username: username, email: email, role: role, status: status,
                                createdAt: node.clock.now(), passwordHash: hash)
            store.compareAndSet(Self.nameKey(username), expected: nil, new: Array(username.utf8)) { [self] claimed in
                switch claimed {
                case .failure(let error): completion(.failure(.store(error)))
                case .success(false): completion(.failure(.exists))
                case .success(true):
                    store.delete(Self.tombstoneKey(user.userID)) { _ in }
                    store.put(Self.userKey(user.userID), value: JSONWriter.bytes(user.record)) { stored in
                        completion(stored.map { user }.mapError { .store($0) })
                    }
                }
            }
        }
    }

    /// Writes a changed user. Blocking or deactivating a user closes their live connections
    /// on every node (the engine's disconnect-user operation).
    public func save(_ user: JuneUser, newPassword: String? = nil, completion: @escaping @Sendable (Result<JuneUser, StoreError>) -> Void) {
        DispatchQueue.global().async { [self] in
            var changed = user
            if let newPassword { changed.passwordHash = PasswordHash.make(newPassword, iterations: passwordIterations) }
            let user = changed
            store.put(Self.userKey(user.userID), value: JSONWriter.bytes(user.record)) { [node] stored in
                if case .success = stored, user.status != "active" {
                    node.disconnect(user: user.userID, client: nil, reason: DisconnectReason(code: 3503, reason: "user \(user.status)"))
                }
                completion(stored.map { user })
            }
        }
    }

    /// A page of users in user id order.
    public func list(limit: Int, offset: Int, completion: @escaping @Sendable (Result<[JuneUser], StoreError>) -> Void) {
        struct Page: Sendable { var skipped = 0; var users: [JuneUser] = [] }
        StoreWalk.fold(store, prefix: "june:user:", into: Page()) { page, record in
            guard let user = (try? JSONParser.parse(record.value)).flatMap(JuneUser.init(record:)) else { return true }
            if page.skipped < offset { page.skipped += 1; return true }
            page.users.append(user)
            return page.users.count < limit
        } done: { completion($0.map(\.users)) }
    }

    /// Removes a user and frees the name; their live connections close on every node.
    /// Completes with the user that was deleted, nil when there was none.
    public func delete(id: String, completion: @escaping @Sendable (Result<JuneUser?, StoreError>) -> Void) {
        user(id: id) { [self] found in
            guard case .success(let user?) = found else { completion(found); return }
            store.delete(Self.userKey(id)) { [self] deleted in
                guard case .success = deleted else { completion(.failure(StoreError("user store unavailable"))); return }
                node.disconnect(user: id, client: nil, reason: DisconnectReason(code: 3503, reason: "user deleted"))
                // Tokens issued before the deletion stay valid until they expire: the tombstone
                // makes `isActive` refuse them (a user the directory never knew still counts as active).
                store.put(Self.tombstoneKey(id), value: Array("deleted".utf8)) { [self] _ in
                    store.delete(Self.nameKey(user.username)) { _ in completion(.success(user)) }
                }
            }
        }
    }

    /// Whether a user may act now: users the directory does not know (tokens issued by
    /// another backend) count as active.
    public func isActive(_ id: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        user(id: id) { [store] found in
            switch found {
            case .failure(let error): completion(.failure(error))
            case .success(let user?): completion(.success(user.status == "active"))
            case .success(nil): store.get(Self.tombstoneKey(id)) { completion($0.map { $0 == nil }) }
            }
        }
    }

    /// Creates the configured first admin when no user of that name exists yet.
    public func ensureAdmin(username: String, password: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        create(username: username, email: nil, password: password, role: "admin", status: "active") { result in
            switch result {
            case .success: completion(.success(true))
            case .failure(.exists): completion(.success(false))
            case .failure(.store(let error)): completion(.failure(error))
            }
        }
    }
}
