// Loaded with `node --import ./register.mjs`: lets plain Node resolve the Workers-only module `cloudflare:workers`.
import { register } from "node:module";

register("./loader.mjs", import.meta.url);
