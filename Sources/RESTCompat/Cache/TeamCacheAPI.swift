import Channels

/// Seed 001's REST API (TeamCache Manager API Gateway), path for path: the health check and the
/// cache jobs. `X-API-Key` (API_GATEWAY_KEY), 10 requests a minute per key (class `teamcache`),
/// errors as `{"success":false,"error":"…"}`.
public struct TeamCacheAPI: Sendable {
    let service: CacheJobService

    public init(service: CacheJobService) { self.service = service }

    static let auth = AuthScheme.apiKey("teamcache")
    static let rateLimit = "teamcache"
    static let tag = "teamcache"

    public var routes: [Route] {
        [
            Route("GET", "/api/v1/health", auth: .none, errors: .teamCache, summary: "Cache API health and store connectivity",
                  tag: Self.tag, responses: [200: "Healthy", 503: "The record store is unreachable"]) { context in
                service.probeStore { ok in
                    context.json(ok ? 200 : 503, [
                        "success": .bool(ok), "status": .string(ok ? "healthy" : "unhealthy"), "service": "api-gateway",
                        "database": .string(ok ? "connected" : "disconnected"), "timestamp": .string(ISOTime.string(service.clock.now())),
                    ])
                }
            },
            Route("POST", "/api/v1/cache/jobs", auth: Self.auth, errors: .teamCache, rateLimit: Self.rateLimit,
                  summary: "Create a cache job from files and/or directories", tag: Self.tag,
                  body: .json(["type": "object", "properties": [
                      "files": ["type": "array", "items": ["type": "string"]],
                      "directories": ["type": "array", "items": ["type": "string"]],
                      "recursive": ["type": "boolean", "default": true],
                  ]]),
                  responses: [201: "Job created", 400: "Bad paths or body (the message names the path)", 401: "Invalid or missing API key",
                              429: "Too many requests", 503: "No cache root configured"]) { context in
                create(context)
            },
            Route("GET", "/api/v1/cache/jobs", auth: Self.auth, errors: .teamCache, rateLimit: Self.rateLimit,
                  summary: "List cache jobs, newest first", tag: Self.tag,
                  responses: [200: "Jobs", 401: "Invalid or missing API key", 429: "Too many requests"]) { context in
                service.list { result in
                    switch result {
                    case .success(let jobs):
                        context.json(200, ["success": true, "jobs": .array(jobs.map(\.summary)), "total": .int(Int64(jobs.count))])
                    case .failure:
                        context.fail(RouteError(500, "Failed to list jobs"))
                    }
                }
            },
            Route("GET", "/api/v1/cache/jobs/{jobId}", auth: Self.auth, errors: .teamCache, rateLimit: Self.rateLimit,
                  summary: "Job status with file, size and throughput progress", tag: Self.tag,
                  responses: [200: "The job", 400: "Invalid job ID format", 401: "Invalid or missing API key", 404: "Job not found",
                              429: "Too many requests"]) { context in
                guard let id = Self.jobID(context.params["jobId"]) else { context.fail(RouteError(400, "Invalid job ID format")); return }
                service.job(id) { result in
                    switch result {
                    case .success(let job?): context.json(200, ["success": true, "job": job.detail(now: service.clock.now())])
                    case .success(nil): context.fail(RouteError(404, "Job not found"))
                    case .failure: context.fail(RouteError(500, "Failed to get job"))
                    }
                }
            }.streaming(.named { _, params in params["jobId"].map(CacheChannels.progress) }),
            Route("DELETE", "/api/v1/cache/jobs/{jobId}", auth: Self.auth, errors: .teamCache, rateLimit: Self.rateLimit,
                  summary: "Cancel a pending or running job", tag: Self.tag,
                  responses: [200: "Cancelled", 400: "Invalid job ID format, or the job already ended", 401: "Invalid or missing API key",
                              404: "Job not found", 429: "Too many requests"]) { context in
                guard let id = Self.jobID(context.params["jobId"]) else { context.fail(RouteError(400, "Invalid job ID format")); return }
                service.cancel(id) { result in
                    switch result {
                    case .success: context.json(200, ["success": true, "message": "Job cancelled successfully"])
                    case .failure(let error): context.fail(error)
                    }
                }
            },
        ]
    }

    private func create(_ context: RouteContext) {
        let body: JSONValue
        do { body = try context.jsonObject() } catch { context.fail(error); return }
        func strings(_ name: String) throws(RouteError) -> [String] {
            guard let value = body[name], !value.isNull else { return [] }
            guard let items = value.arrayValue else { throw RouteError(400, "\(name) must be an array of paths") }
            var result: [String] = []
            for item in items {
                guard let text = item.stringValue else { throw RouteError(400, "\(name) must be an array of paths") }
                result.append(text)
            }
            return result
        }
        let files: [String], directories: [String]
        do {
            files = try strings("files")
            directories = try strings("directories")
        } catch {
            context.fail(error)
            return
        }
        var recursive = true
        if let value = body["recursive"], !value.isNull {
            guard let flag = value.boolValue else { context.fail(RouteError(400, "recursive must be true or false")); return }
            recursive = flag
        }
        guard !files.isEmpty || !directories.isEmpty else {
            context.fail(RouteError(400, "At least one file or directory is required"))
            return
        }
        service.create(files: files, directories: directories, recursive: recursive) { result in
            switch result {
            case .success(let job):
                context.json(201, [
                    "success": true, "jobId": .string(job.id), "status": .string(job.status.rawValue),
                    "totalFiles": .int(Int64(job.totalFiles)),
                    "totalSize": ["bytes": .int(job.totalBytes), "readable": .string(Readable.bytes(job.totalBytes))],
                    "message": "Cache job created successfully", "createdAt": .string(ISOTime.string(job.createdAt)),
                ])
            case .failure(let error):
                context.fail(error)
            }
        }
    }

    /// Job ids are UUIDs (`6bb4629b-1487-477c-96fe-b762d82a099b`); anything else is refused before the store is asked.
    static func jobID(_ raw: String?) -> String? {
        guard let raw else { return nil }
        let bytes = Array(raw.utf8)
        guard bytes.count == 36 else { return nil }
        for (i, b) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(i) {
                guard b == UInt8(ascii: "-") else { return nil }
            } else {
                let isHex = (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x66)
                guard isHex else { return nil }
            }
        }
        return raw.lowercased()
    }
}
