// The React provider's connection, without a DOM: rendered on the server (which builds the
// connection as a mount does, but runs no effects), then started as the provider's effect starts
// it, against a real client over an in-process transport: what the server is asked for.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { createElement, type ReactNode } from "react";
import { renderToString } from "react-dom/server";
import { NotificationService, type Notifications, type Selection } from "@notify-backbone/client";
import { NotificationsProvider, useNotificationsConnection } from "@notify-backbone/react";

/** What the server got in its Subscribe requests, and a client of it. */
function server() {
  const received: { conflate: boolean; maxEventsPerSecond: number; adminFeed: boolean; inbox: boolean }[] = [];
  const transport = createRouterTransport(({ service }) => {
    service(NotificationService, {
      async *subscribe(request) {
        received.push({
          conflate: request.conflate,
          maxEventsPerSecond: request.maxEventsPerSecond,
          adminFeed: request.adminFeed,
          inbox: request.inbox,
        });
        yield { kind: { case: "caughtUp", value: { cursor: "c0" } } };
        throw new ConnectError("enough", Code.PermissionDenied);
      },
    });
  });
  return { client: createClient(NotificationService, transport), received };
}

/** Renders a provider with `selection` and returns the connection it made for its children. */
function providerConnection(client: ReturnType<typeof server>["client"], selection?: Partial<Selection>): Notifications {
  let connection: Notifications | undefined;
  function Capture(): ReactNode {
    connection = useNotificationsConnection();
    return null;
  }
  renderToString(
    createElement(
      NotificationsProvider,
      {
        client,
        getToken: () => "t",
        history: 0,
        options: { tabs: false },
        ...(selection === undefined ? {} : { selection }),
      },
      createElement(Capture),
    ),
  );
  assert.ok(connection, "the provider gives its children a connection");
  return connection;
}

/** Starts `connection` (as the provider's effect does) and waits for the server's refusal. */
async function run(connection: Notifications): Promise<void> {
  const done = new Promise<void>((resolve) => connection.listen({ onState: (s) => s.state === "error" && resolve() }));
  connection.start();
  await done;
  connection.stop();
}

test("the provider subscribes with conflate by default; selection={{ conflate: false }} turns it off", async () => {
  const { client, received } = server();
  await run(providerConnection(client));
  await run(providerConnection(client, { adminFeed: true }));
  await run(providerConnection(client, { conflate: false }));
  await run(providerConnection(client, { adminFeed: true, maxEventsPerSecond: 10 }));
  assert.deepEqual(received, [
    { conflate: true, maxEventsPerSecond: 0, adminFeed: false, inbox: true },
    { conflate: true, maxEventsPerSecond: 0, adminFeed: true, inbox: true },
    { conflate: false, maxEventsPerSecond: 0, adminFeed: false, inbox: true },
    { conflate: true, maxEventsPerSecond: 10, adminFeed: true, inbox: true },
  ]);
});
