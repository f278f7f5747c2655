// Reading a token's claims in the browser, only to decide what to show.
import assert from "node:assert/strict";
import { test } from "node:test";
import { isAdmin, readClaims } from "../src/token";

function jwt(payload: unknown): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(payload)}.c2lnbmF0dXJl`;
}

test("claims are read from the payload, roles decide admin", () => {
  const user = readClaims(jwt({ sub: "u-1", username: "Zoë", roles: ["user"], exp: 10 }));
  assert.deepEqual(user, { sub: "u-1", username: "Zoë", roles: ["user"], exp: 10 });
  assert.equal(isAdmin(user), false);
  assert.equal(isAdmin(readClaims(jwt({ sub: "ops", roles: ["admin"] }))), true);
  assert.equal(isAdmin(readClaims(jwt({ sub: "root", roles: ["super_admin"] }))), true);
  // Like the server, the page ignores `isSuperAdmin`: only roles count.
  assert.equal(isAdmin(readClaims(jwt({ sub: "root", isSuperAdmin: true }))), false);
  assert.equal(isAdmin(readClaims(jwt({ sub: "root", roles: ["user"], isSuperAdmin: true }))), false);
  assert.equal(isAdmin(readClaims(jwt({ sub: "svc", roles: ["service", 7] }))), false);
});

test("anything that is not a JWT reads as no claims", () => {
  for (const token of ["", "abc", "a.b.c", `x.${Buffer.from("[1]").toString("base64url")}.y`]) {
    const claims = readClaims(token);
    assert.ok(claims === undefined || claims.sub === "", token);
    assert.equal(isAdmin(claims), false, token);
  }
});
