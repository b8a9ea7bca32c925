// Resolves `cloudflare:workers` (present only in the Workers runtime) to a small stand-in: the
// SandboxClient path never runs Durable Objects; it only needs the names to exist at import time.
// @cloudflare/containers imports its own files without extensions (bundler style): `.js` is added.
const STAND_IN = `
export class DurableObject { constructor(ctx, env) { this.ctx = ctx; this.env = env; } }
export class WorkerEntrypoint { constructor(ctx, env) { this.ctx = ctx; this.env = env; } }
export class RpcTarget {}
export const tracing = { enterSpan: (_name, fn, ...args) => fn({ setAttribute() {}, end() {} }, ...args) };
export const env = {};
export default {};
`;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === "cloudflare:workers") {
    return { url: "data:text/javascript," + encodeURIComponent(STAND_IN), shortCircuit: true };
  }
  try {
    return await nextResolve(specifier, context);
  } catch (error) {
    if (error?.code === "ERR_MODULE_NOT_FOUND" && specifier.startsWith(".") && !specifier.endsWith(".js")) {
      return nextResolve(specifier + ".js", context);
    }
    throw error;
  }
}
