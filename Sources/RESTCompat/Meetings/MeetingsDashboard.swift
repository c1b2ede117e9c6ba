/// A small live dashboard for the meetings pipeline: paste a token, upload a recording, watch
/// progress arrive on each meeting's channel, download artifacts. Plain HTML and JavaScript
/// speaking the client protocol directly, served by the hub so it needs nothing else.
extension MeetingsPipeline {
    var dashboardRoutes: [Route] {
        // Scripts come from the hub itself; the WebSocket goes back to it.
        let policy = ("content-security-policy", "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        return [
            Route("GET", "/dashboard/meetings", auth: .none, errors: .meetings,
                  summary: "Live meetings dashboard (HTML; the token is entered in the page)", tag: Self.tag,
                  responses: [200: "The page"], produces: "text/html") { context in
                context.respond(HTTPResponse(status: 200, headers: [("content-type", "text/html; charset=utf-8"), policy],
                                             body: Array(Self.dashboardHTML.utf8)))
            },
            Route("GET", "/dashboard/meetings.js", auth: .none, errors: .meetings, summary: "The dashboard's script",
                  tag: Self.tag, responses: [200: "JavaScript"], produces: "text/javascript") { context in
                context.respond(HTTPResponse(status: 200, headers: [("content-type", "text/javascript; charset=utf-8"), policy],
                                             body: Array(Self.dashboardScript.utf8)))
            },
        ]
    }

    static let dashboardHTML = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>Meetings</title>
        <style>
        body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}
        table{border-collapse:collapse;width:100%}td,th{padding:.3em .5em;border-bottom:1px solid #ddd;text-align:left}
        progress{width:8em}.failed{color:#b00}.completed{color:#070}#state{color:#666}
        </style></head><body>
        <h1>Meetings</h1>
        <p><label>Access token <input id="token" size="60" placeholder="Bearer token from /v1/auth/telegram/login"></label>
        <button id="go">Connect</button> <span id="state">not connected</span></p>
        <p><input type="file" id="file" accept="audio/*,video/*"> <button id="upload">Upload</button> <span id="uploaded"></span></p>
        <table><thead><tr><th>title</th><th>status</th><th>progress</th><th>stage</th><th>artifacts</th></tr></thead>
        <tbody id="rows"></tbody></table>
        <script src="/dashboard/meetings.js"></script>
        </body></html>
        """

    static let dashboardScript = #"""
        "use strict";
        const $ = (id) => document.getElementById(id);
        let token = sessionStorage.getItem("meetings-token") || "";
        let socket = null, nextId = 1;
        const subscribed = new Set();
        $("token").value = token;

        function api(path, options = {}) {
          options.headers = Object.assign({"Authorization": "Bearer " + token}, options.headers || {});
          return fetch(path, options).then(async (r) => {
            const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
            if (!r.ok) throw new Error(body?.error?.message || ("HTTP " + r.status));
            return body;
          });
        }

        function row(meeting) {
          let tr = document.getElementById("m-" + meeting.meeting_id);
          if (!tr) {
            tr = document.createElement("tr");
            tr.id = "m-" + meeting.meeting_id;
            for (let i = 0; i < 5; i++) tr.appendChild(document.createElement("td"));
            tr.children[2].appendChild(document.createElement("progress")).max = 100;
            $("rows").prepend(tr);
          }
          return tr;
        }

        function show(meeting) {
          const tr = row(meeting);
          if (meeting.title) tr.children[0].textContent = meeting.title;
          tr.children[1].textContent = meeting.status + (meeting.error ? ": " + meeting.error : "");
          tr.children[1].className = meeting.status;
          tr.children[2].firstChild.value = meeting.progress || 0;
          tr.children[3].textContent = meeting.stage || "";
          if (meeting.status === "completed") artifacts(meeting.meeting_id);
        }

        function artifacts(id) {
          api("/v1/meetings/" + id + "/artifacts").then((list) => {
            const cell = row({meeting_id: id}).children[4];
            cell.textContent = "";
            for (const a of list.artifacts) {
              const link = cell.appendChild(document.createElement("a"));
              link.href = a.download_url;
              link.textContent = a.name;
              cell.appendChild(document.createTextNode(" "));
            }
          }).catch(() => {});
        }

        function send(command) {
          command.id = nextId++;
          socket.send(JSON.stringify(command));
        }

        function watch(meeting) {
          if (!socket || socket.readyState !== 1 || subscribed.has(meeting.channel)) return;
          subscribed.add(meeting.channel);
          send({subscribe: {channel: meeting.channel}});
        }

        function connect() {
          token = $("token").value.trim().replace(/^Bearer\s+/i, "");
          sessionStorage.setItem("meetings-token", token);
          if (socket) socket.close();
          subscribed.clear();
          const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/connection/websocket";
          socket = new WebSocket(url);
          socket.onopen = () => send({connect: {token, name: "meetings-dashboard"}});
          socket.onmessage = (event) => {
            for (const line of event.data.split("\n")) {
              if (!line) continue;
              const message = JSON.parse(line);
              if (Object.keys(message).length === 0) { socket.send("{}"); continue; }  // ping
              if (message.connect) { $("state").textContent = "live"; refresh(); }
              if (message.error) $("state").textContent = "error: " + message.error.message;
              const pub = message.push?.pub;
              if (pub && pub.data && pub.data.meeting_id) {
                if (pub.data.type === "deleted") row(pub.data).remove();
                else if (pub.data.type !== "artifact") show(pub.data);
              }
            }
          };
          socket.onclose = () => { $("state").textContent = "disconnected; reconnecting"; setTimeout(connect, 2000); };
        }

        function refresh() {
          api("/v1/meetings?limit=100").then((page) => {
            for (const m of page.meetings.reverse()) { show(m); watch(m); }
          }).catch((e) => { $("state").textContent = e.message; });
        }

        $("go").onclick = connect;
        $("upload").onclick = () => {
          const file = $("file").files[0];
          if (!file) return;
          $("uploaded").textContent = "uploading…";
          const form = new FormData();
          form.append("file", file);
          form.append("title", file.name);
          api("/v1/files", {method: "POST", body: form})
            .then((created) => api("/v1/meetings/" + created.meeting_id))
            .then((m) => { $("uploaded").textContent = ""; show(m); watch(m); })
            .catch((e) => { $("uploaded").textContent = e.message; });
        };
        if (token) connect();
        """#
}
