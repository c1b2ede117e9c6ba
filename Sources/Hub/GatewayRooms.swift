import Channels
import Logging
import RESTCompat
import RedisEngine
import Store

/// Seeds 000 and 002 wired into the hub: the outbound gateway client, the service, its
/// monitor, the route tables, the bearer tokens and the `gateways.snapshot` RPC.
struct GatewayRooms {
    let service: GatewayService
    let monitor: GatewayMonitor
    let client: GatewayHTTPClient
    let routes: [Route]
    let tokens: [String: Credentials.StaticTokens]

    init(config: HubConfig, store: any RecordStore, node: Node, redisStore: RedisRecordStore?) {
        let logger = Logger(label: "hub.gateways")
        var settings = GatewayService.Settings()
        settings.connectTimeout = config.gatewayConnectTimeout
        settings.totalTimeout = config.gatewayTimeout
        settings.monitorInterval = config.gatewayMonitorInterval
        settings.monitorFailures = config.gatewayMonitorFailures
        client = GatewayHTTPClient(settings: .init(connectTimeout: settings.connectTimeout, totalTimeout: settings.totalTimeout))
        service = GatewayService(store: store, node: node, client: client, settings: settings, logger: logger)
        // With Redis, records written by other tools (`redis-cli SET gateway:gw09 …`) are indexed
        // so listings include them…
        var discover: (@Sendable (@escaping @Sendable () -> Void) -> Void)?
        if let redisStore {
            // … and the free ones among them join the free set, so `/start` can hand them out.
            discover = { done in
                redisStore.indexExisting(pattern: GatewayRecord.keyPrefix + "*") { _ in redisStore.rebuildMemberSets { _ in done() } }
            }
        }
        monitor = GatewayMonitor(service: service, nodeID: node.uid, discover: discover)
        routes = RoomProxy(service: service, assets: GatewayAssets(root: config.gatewayAssetsDir)).routes
            + GatewayLauncher(service: service).routes
        tokens = [RoomProxy.tokensName: .init(allowed: config.gatewayAllowedToken, admin: config.gatewayAdminToken)]
        let service = service
        node.registerRPC("gateways.snapshot") { _, _, reply in service.snapshot(completion: reply) }
        if config.gatewayAllowedToken == nil && config.gatewayAdminToken == nil {
            logger.warning("no gateway tokens configured: the gateway routes refuse every call (set HUB_GATEWAY_ALLOWED_TOKEN and HUB_GATEWAY_ADMIN_TOKEN)")
        }
    }

    func start() { monitor.start() }

    func stop() {
        monitor.stop()
        client.shutdown()
    }
}
