// Reads a JWT's payload in the browser, only to decide what to show (the admin feed selector,
// whose events these are). Nothing here verifies anything: the server checks every token, and
// decides admin-ness by roles alone (`--admin-role`, by default admin and super_admin; it ignores
// `isSuperAdmin`). The page mirrors the default; a deployment with other admin roles is handled by
// falling back to "mine" when the server refuses (app.ts).

/** The claims the page looks at. */
export interface TokenClaims {
  sub: string;
  username: string;
  roles: string[];
  exp: number | undefined;
}

/** Roles that may pick the admin feed or the firehose (the server's default `--admin-role`). */
export const ADMIN_ROLES: readonly string[] = ["admin", "super_admin"];

function base64UrlDecode(text: string): string {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The payload of `token`, or `undefined` when it is not a readable JWT. */
export function readClaims(token: string): TokenClaims | undefined {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[1] === undefined) return undefined;
  let payload: unknown;
  try {
    payload = JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    return undefined;
  }
  if (typeof payload !== "object" || payload === null) return undefined;
  const claims = payload as Record<string, unknown>;
  const roles = Array.isArray(claims["roles"])
    ? claims["roles"].filter((role): role is string => typeof role === "string")
    : [];
  return {
    sub: typeof claims["sub"] === "string" ? claims["sub"] : "",
    username: typeof claims["username"] === "string" ? claims["username"] : "",
    roles,
    exp: typeof claims["exp"] === "number" ? claims["exp"] : undefined,
  };
}

/** Whether the page should offer the admin feed and the firehose. */
export function isAdmin(claims: TokenClaims | undefined): boolean {
  if (claims === undefined) return false;
  return claims.roles.some((role) => ADMIN_ROLES.includes(role));
}
