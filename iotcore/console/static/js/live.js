// The live stream: EventSource cannot send a bearer token, so each connection starts with a
// short-lived single-use ticket. The ticket is spent on connect, so the browser's own
// reconnection cannot work: on any error we close, fetch a new ticket and reconnect with the
// last event id, so nothing stored in between is missed.
import { api } from "./api.js";

export class LiveFeed {
  constructor(deviceId, handlers) {
    this.deviceId = deviceId;
    this.handlers = handlers; // {telemetry, command, presence, state}
    this.lastEventId = null;
    this.source = null;
    this.stopped = false;
    this.delay = 500;
    this.timer = null;
  }

  async connect() {
    if (this.stopped) return;
    this.handlers.state("connecting");
    let ticket;
    try {
      ticket = (await api("POST", "/telemetry/stream/ticket")).ticket;
    } catch {
      this.retry();
      return;
    }
    if (this.stopped) return;
    const query = new URLSearchParams({ device_id: this.deviceId, ticket });
    if (this.lastEventId) query.set("last_event_id", this.lastEventId);
    const source = new EventSource(`/api/v1/telemetry/stream?${query}`);
    this.source = source;
    source.addEventListener("open", () => {
      this.delay = 500;
      this.handlers.state("live");
    });
    for (const kind of ["telemetry", "command", "presence"]) {
      source.addEventListener(kind, (event) => {
        if (event.lastEventId) this.lastEventId = event.lastEventId;
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        if (this.handlers[kind]) this.handlers[kind](data);
      });
    }
    source.addEventListener("error", () => {
      source.close();
      if (this.source === source) this.source = null;
      this.retry();
    });
  }

  retry() {
    if (this.stopped) return;
    this.handlers.state("reconnecting");
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, 15000);
  }

  // Drop the connection as a network would, reconnecting after `pauseMs` (tests use it to
  // prove that readings stored meanwhile arrive on resume).
  drop(pauseMs = 500) {
    if (this.source) this.source.close();
    this.source = null;
    this.delay = pauseMs;
    this.retry();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }
}
