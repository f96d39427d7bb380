// Element's own client stack (matrix-js-sdk with its Rust crypto) reads the bot's
// messages in a room and reports the shield Element would draw on each.
//
//   node check_shield.mjs <homeserver> <user id> <password> <room id> <bot user id> <count>
//
// Logs in as a new device, prints "READY" once its device keys are on the server (so the
// bot shares its next room keys with it), then waits for <count> decrypted messages from
// the bot in <room id> and prints one JSON line: the shield colour/reason of each, and the
// bot device's verification status (signedByOwner = cross-signed by its owner).
import "fake-indexeddb/auto";
import * as sdk from "matrix-js-sdk";
import { EventShieldColour, EventShieldReason } from "matrix-js-sdk/lib/crypto-api/index.js";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("error");
const [homeserver, userId, password, roomId, botUserId, countArg] = process.argv.slice(2);
const wanted = Number(countArg || "1");

const login = await sdk.createClient({ baseUrl: homeserver }).loginRequest({
  type: "m.login.password",
  identifier: { type: "m.id.user", user: userId },
  password,
  initial_device_display_name: "Element check",
});
const client = sdk.createClient({
  baseUrl: homeserver,
  userId: login.user_id,
  accessToken: login.access_token,
  deviceId: login.device_id,
});
await client.initRustCrypto({ useIndexedDB: false });
const crypto = client.getCrypto();

const seen = new Map();
const done = new Promise((resolve) => {
  const consider = async (ev) => {
    if (ev.getRoomId() !== roomId || ev.getSender() !== botUserId || seen.has(ev.getId())) return;
    if (ev.isBeingDecrypted() || ev.isDecryptionFailure() || ev.getType() !== "m.room.message") return;
    seen.set(ev.getId(), null);
    const info = await crypto.getEncryptionInfoForEvent(ev);
    seen.set(ev.getId(), {
      body: ev.getContent().body,
      encrypted: ev.isEncrypted(),
      shield: EventShieldColour[info.shieldColour],
      reason: info.shieldReason === null ? null : EventShieldReason[info.shieldReason],
    });
    if ([...seen.values()].filter(Boolean).length >= wanted) resolve();
  };
  client.on(sdk.RoomEvent.Timeline, (ev) => consider(ev));
  client.on(sdk.MatrixEventEvent.Decrypted, (ev) => consider(ev));
});

await client.startClient({ initialSyncLimit: 0 });
await new Promise((resolve) => client.once(sdk.ClientEvent.Sync, resolve));
// our device keys are uploaded during start-up; make sure the server has them
for (let i = 0; i < 100; i++) {
  const q = await client.downloadKeysForUsers([userId]);
  if (q.device_keys?.[userId]?.[login.device_id]) break;
  await new Promise((r) => setTimeout(r, 100));
}
console.log("READY");

await done;
const botDevices = await crypto.getUserDeviceInfo([botUserId], true);
const devices = [];
for (const deviceId of botDevices.get(botUserId)?.keys() ?? []) {
  const status = await crypto.getDeviceVerificationStatus(botUserId, deviceId);
  devices.push({ deviceId, signedByOwner: status.signedByOwner,
                 crossSigningVerified: status.crossSigningVerified });
}
console.log(JSON.stringify({ events: [...seen.values()].filter(Boolean), devices }));
client.stopClient();
process.exit(0);
