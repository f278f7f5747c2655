// A tab's token: the one its stream and its calls (the inbox's, the preferences') share, fetched
// from the app's `getToken` when there is none and replaced when the server refuses it as expired.
// One fetch at a time, so a stream and a call that find the token expired together ask the app's
// session once. Whatever the token is used for, this does not look inside it (except `subjectOf`,
// which reads the user a stream shared by tabs is named after: nothing is verified here).

import { Code, ConnectError } from "@connectrpc/connect";

/** The latest token of a tab. */
export class TokenCache {
  private value: string | undefined;
  private pending: Promise<string> | undefined;

  constructor(private readonly getToken: () => Promise<string> | string) {}

  /** The token in use, or a new one from `getToken` when there is none yet. */
  current(): Promise<string> {
    return this.value !== undefined ? Promise.resolve(this.value) : this.fetch();
  }

  /**
   * A token other than `stale` (the one the server refused): the token in use when someone else
   * has replaced it already, a new one from `getToken` otherwise.
   */
  fresh(stale: string | undefined): Promise<string> {
    return this.value !== undefined && this.value !== stale ? Promise.resolve(this.value) : this.fetch();
  }

  private fetch(): Promise<string> {
    this.pending ??= (async () => {
      try {
        const token = await this.getToken();
        this.value = token;
        return token;
      } finally {
        this.pending = undefined;
      }
    })();
    return this.pending;
  }
}

/** The headers of a call made with `token`. */
export type AuthHeaders = { authorization: string };

/**
 * Runs `call` with the current token; when the server refuses it as expired (UNAUTHENTICATED),
 * once more with a fresh one.
 */
export async function withToken<T>(tokens: TokenCache, call: (headers: AuthHeaders) => Promise<T>): Promise<T> {
  const token = await tokens.current();
  try {
    return await call({ authorization: `Bearer ${token}` });
  } catch (error) {
    if (ConnectError.from(error).code !== Code.Unauthenticated) throw error;
    const fresh = await tokens.fresh(token);
    if (fresh === token) throw error;
    return await call({ authorization: `Bearer ${fresh}` });
  }
}

/**
 * The `sub` claim of a JWT, read without verifying anything, or `undefined` when `token` is not a
 * readable JWT with one.
 */
export function subjectOf(token: string): string | undefined {
  const payload = token.split(".")[1];
  if (payload === undefined || token.split(".").length !== 3) return undefined;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const claims: unknown = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    if (typeof claims !== "object" || claims === null) return undefined;
    const sub = (claims as Record<string, unknown>)["sub"];
    return typeof sub === "string" && sub !== "" ? sub : undefined;
  } catch {
    return undefined;
  }
}
