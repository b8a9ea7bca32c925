// Drives an isolate worker with Cloudflare's real client (SandboxClient from @cloudflare/sandbox) through
// every route, asserting the SDK's own behaviour checklist. Prints one line per check, then "N passed, N failed".
// Usage: ISOLATE_URL=http://127.0.0.1:PORT ISOLATE_TOKEN=... SANDBOX_ID=... node --import ./register.mjs drive.mjs
import assert from "node:assert/strict";
import { SandboxClient, collectFile, parseSSEStream } from "@cloudflare/sandbox";

const baseUrl = process.env.ISOLATE_URL;
const headers = { "X-Sandbox-Id": process.env.SANDBOX_ID, "X-Isolate-Token": process.env.ISOLATE_TOKEN ?? "" };
const client = new SandboxClient({ baseUrl, defaultHeaders: headers, retryTimeoutMs: 1000 });
const results = { passed: 0, failed: 0 };

async function check(name, body) {
  try {
    await body();
    results.passed++;
    console.log(`ok   ${name}`);
  } catch (error) {
    results.failed++;
    console.log(`FAIL ${name}: ${error?.stack ?? error}`);
  }
}

async function rejects(promise, code, status) {
  try {
    await promise;
  } catch (error) {
    assert.equal(error.code, code, `expected ${code}, got ${error.code}: ${error.message}`);
    if (status !== undefined) assert.equal(error.httpStatus, status);
    return error;
  }
  assert.fail(`expected an error ${code}`);
}

async function events(stream) {
  const all = [];
  for await (const event of parseSSEStream(stream)) all.push(event);
  return all;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) assert.fail("condition not met in time");
    await sleep(100);
  }
}

const S = "sess-main";

await check("utils.ping and getVersion", async () => {
  assert.equal(await client.utils.ping(), "pong");
  assert.match(await client.utils.getVersion(), /^\d+\.\d+/);
});

await check("session create, duplicate is SESSION_ALREADY_EXISTS", async () => {
  const created = await client.utils.createSession({ id: S, env: { FROM_SESSION: "yes" }, cwd: "/workspace" });
  assert.equal(created.success, true);
  await rejects(client.utils.createSession({ id: S }), "SESSION_ALREADY_EXISTS", 409);
});

await check("session list (route only: the client's listSessions needs the RPC transport)", async () => {
  const response = await fetch(`${baseUrl}/api/session/list`, { headers });
  const body = await response.json();
  assert.ok(body.data.includes(S));
});

await check("execute: output, exit codes, success flag", async () => {
  const ok = await client.commands.execute("echo hello; echo oops >&2", S);
  assert.equal(ok.stdout, "hello\n");
  assert.equal(ok.stderr, "oops\n");
  assert.equal(ok.exitCode, 0);
  assert.equal(ok.success, true);
  const failed = await client.commands.execute("exit 3", undefined);
  assert.equal(failed.exitCode, 3);
  assert.equal(failed.success, false);
});

await check("a missing command is HTTP 200, exit 127, 'command not found'", async () => {
  const result = await client.commands.execute("no-such-command-here", S);
  assert.equal(result.exitCode, 127);
  assert.match(result.stderr, /not found/);
});

await check("stdin is /dev/null: cat returns at once", async () => {
  const started = Date.now();
  const result = await client.commands.execute("cat", S);
  assert.equal(result.stdout, "");
  assert.ok(Date.now() - started < 5000);
});

await check("sessions persist cd and export; env of the session applies", async () => {
  await client.commands.execute("mkdir -p /tmp/wd && cd /tmp/wd && export KEPT=1", S);
  const result = await client.commands.execute("pwd; echo $KEPT $FROM_SESSION", S);
  assert.equal(result.stdout, "/tmp/wd\n1 yes\n");
});

await check("relative paths resolve against the session's working directory", async () => {
  await client.files.writeFile("rel.txt", "relative", S);
  assert.equal((await client.files.readFile("/tmp/wd/rel.txt", S)).content, "relative");
});

await check("per-command env and cwd", async () => {
  const result = await client.commands.execute("echo $ONE; pwd", S, { env: { ONE: "1" }, cwd: "/tmp" });
  assert.equal(result.stdout, "1\n/tmp\n");
});

await check("a per-command timeout ends the command with an error; the session stays usable", async () => {
  const started = Date.now();
  await rejects(client.commands.execute("sleep 30", S, { timeoutMs: 500 }), "COMMAND_EXECUTION_ERROR", 500);
  assert.ok(Date.now() - started < 10000);
  assert.equal((await client.commands.execute("pwd", S)).stdout, "/tmp/wd\n");
});

await check("exit N ends the session: 410 SESSION_TERMINATED, then a fresh shell", async () => {
  await client.utils.createSession({ id: "sess-exit" });
  await rejects(client.commands.execute("cd /tmp; exit 4", "sess-exit"), "SESSION_TERMINATED", 410);
  assert.equal((await client.commands.execute("pwd", "sess-exit")).stdout, "/workspace\n");
  await client.utils.deleteSession("sess-exit");
});

await check("concurrent commands of one session are serialized and never interleave", async () => {
  const script = (n) => `for i in 1 2 3; do echo ${n}-$i; sleep 0.05; done`;
  const outputs = await Promise.all([0, 1, 2, 3].map((n) => client.commands.execute(script(n), S)));
  outputs.forEach((result, n) => assert.equal(result.stdout, `${n}-1\n${n}-2\n${n}-3\n`));
});

await check("execute/stream: start, output as it comes, complete", async () => {
  const stream = await client.commands.executeStream("echo a; sleep 0.3; echo b >&2; (exit 2)", S);
  const all = await events(stream);
  assert.equal(all[0].type, "start");
  assert.deepEqual(all.filter((e) => e.type === "stdout").map((e) => e.data), ["a\n"]);
  assert.deepEqual(all.filter((e) => e.type === "stderr").map((e) => e.data), ["b\n"]);
  assert.equal(all.at(-1).type, "complete");
  assert.equal(all.at(-1).exitCode, 2);
});

await check("write, read (text and base64), read/stream", async () => {
  await client.files.writeFile("/workspace/dir/a.txt", "hello text", S);
  const text = await client.files.readFile("/workspace/dir/a.txt", S);
  assert.equal(text.content, "hello text");
  assert.equal(text.isBinary, false);
  const bytes = Buffer.from([0, 1, 2, 255, 254]);
  await client.files.writeFile("/workspace/dir/b.bin", bytes.toString("base64"), S, { encoding: "base64" });
  const binary = await client.files.readFile("/workspace/dir/b.bin", S);
  assert.equal(binary.isBinary, true);
  assert.equal(binary.encoding, "base64");
  assert.equal(binary.content, bytes.toString("base64"));
  const streamed = await collectFile(await client.files.readFileStream("/workspace/dir/b.bin", S));
  assert.deepEqual(Buffer.from(streamed.content), bytes);
  const large = "x".repeat(200000);
  await client.files.writeFile("/workspace/dir/large.txt", large, S);
  const collected = await collectFile(await client.files.readFileStream("/workspace/dir/large.txt", S));
  assert.equal(collected.content, large);
  assert.equal(collected.metadata.size, large.length);
});

await check("bad base64 and bad paths are VALIDATION_FAILED", async () => {
  await rejects(client.files.writeFile("/workspace/x", "@@not base64@@", S, { encoding: "base64" }), "VALIDATION_FAILED", 400);
  await rejects(client.files.readFile("", S), "VALIDATION_FAILED", 400);
  await rejects(client.files.readFile("/a\u0000b", S), "VALIDATION_FAILED", 400);
  await rejects(client.files.readFile("/" + "a".repeat(5000), S), "VALIDATION_FAILED", 400);
});

await check("missing file: 404 FILE_NOT_FOUND with the path in the message", async () => {
  const error = await rejects(client.files.readFile("/workspace/none.txt", S), "FILE_NOT_FOUND", 404);
  assert.match(error.message, /File not found: \/workspace\/none.txt/);
});

await check("mkdir, exists, list-files (recursive, hidden, errors)", async () => {
  await client.files.mkdir("/workspace/tree/sub", S, { recursive: true });
  await client.files.writeFile("/workspace/tree/sub/f.txt", "f", S);
  await client.files.writeFile("/workspace/tree/.hidden", "h", S);
  assert.equal((await client.files.exists("/workspace/tree/sub/f.txt", S)).exists, true);
  assert.equal((await client.files.exists("/workspace/missing", S)).exists, false);
  const plain = await client.files.listFiles("/workspace/tree", S);
  assert.deepEqual(plain.files.map((f) => f.name).sort(), ["sub"]);
  const all = await client.files.listFiles("/workspace/tree", S, { recursive: true, includeHidden: true });
  assert.deepEqual(all.files.map((f) => f.relativePath).sort(), [".hidden", "sub", "sub/f.txt"]);
  const file = all.files.find((f) => f.name === "f.txt");
  assert.equal(file.type, "file");
  assert.equal(file.size, 1);
  assert.equal(file.permissions.readable, true);
  await rejects(client.files.listFiles("/workspace/nope", S), "FILE_NOT_FOUND", 404);
  await rejects(client.files.listFiles("/workspace/tree/sub/f.txt", S), "NOT_DIRECTORY", 400);
  await rejects(client.files.mkdir("/workspace/tree", S), "FILE_EXISTS", 409);
});

await check("delete, rename, move and their errors", async () => {
  await rejects(client.files.deleteFile("/workspace/tree", S), "IS_DIRECTORY", 400);
  assert.equal((await client.files.exists("/workspace/tree/sub/f.txt", S)).exists, true);
  await rejects(client.files.deleteFile("/workspace/none", S), "FILE_NOT_FOUND", 404);
  await rejects(client.files.renameFile("/workspace/none", "/workspace/none2", S), "FILE_NOT_FOUND", 404);
  await rejects(client.files.moveFile("/workspace/none", "/workspace/none2", S), "FILE_NOT_FOUND", 404);
  await client.files.renameFile("/workspace/dir/a.txt", "/workspace/dir/renamed.txt", S);
  await client.files.moveFile("/workspace/dir/renamed.txt", "/workspace/tree/moved.txt", S);
  assert.equal((await client.files.readFile("/workspace/tree/moved.txt", S)).content, "hello text");
  await client.files.deleteFile("/workspace/tree/moved.txt", S);
  assert.equal((await client.files.exists("/workspace/tree/moved.txt", S)).exists, false);
});

await check("git checkout from a git server the sandbox may reach; missing repository and branch, bad depth and URLs", async () => {
  // GIT_BASE: git://<address of a test host in a namespace the test made>, which the sandbox's allowlist lists
  const base = process.env.GIT_BASE;
  const cloned = await client.git.checkout(`${base}/demo.git`, S, { depth: 1 });
  assert.equal(cloned.success, true);
  assert.equal(cloned.branch, "main");
  assert.equal(cloned.targetDir, "/workspace/demo");
  assert.equal((await client.files.readFile("/workspace/demo/README", S)).content, "main two\n");
  const feature = await client.git.checkout(`${base}/demo.git`, S, { branch: "feature", targetDir: "/workspace/feature" });
  assert.equal(feature.branch, "feature");
  await rejects(client.git.checkout(`${base}/no-such-repo.git`, S, { targetDir: "/workspace/none" }), "GIT_REPOSITORY_NOT_FOUND", 404);
  await rejects(client.git.checkout(`${base}/demo.git`, S, { targetDir: "/workspace/c2", branch: "nope" }), "GIT_BRANCH_NOT_FOUND", 404);
  await assert.rejects(client.git.checkout(`${base}/demo.git`, S, { depth: 0 }), /positive integer/);
  await rejects(client.git.checkout("not a url", S), "INVALID_GIT_URL", 400);
  await rejects(client.git.checkout("file:///etc", S), "INVALID_GIT_URL", 400);
});

await check("background processes: start, get, logs, stream with replay, list", async () => {
  const started = await client.processes.startProcess("echo early; sleep 1; echo late; echo err >&2", S, { processId: "bg-1" });
  assert.equal(started.processId, "bg-1");
  assert.ok(started.pid > 0);
  await sleep(300);
  const all = await events(await client.processes.streamProcessLogs("bg-1"));
  assert.equal(all[0].type, "process_info");
  assert.deepEqual(all.filter((e) => e.type === "stdout").map((e) => e.data).join(""), "early\nlate\n");
  assert.equal(all.at(-1).type, "exit");
  assert.equal(all.at(-1).exitCode, 0);
  const info = await client.processes.getProcess("bg-1");
  assert.equal(info.process.status, "completed");
  const logs = await client.processes.getProcessLogs("bg-1");
  assert.equal(logs.stdout, "early\nlate\n");
  assert.equal(logs.stderr, "err\n");
  const list = await client.processes.listProcesses();
  assert.ok(list.processes.some((p) => p.id === "bg-1" && p.status === "completed"));
});

await check("execute with background:true starts a process", async () => {
  const response = await fetch(`${baseUrl}/api/execute`, {
    method: "POST", headers: { ...headers, "Content-Type": "application/json" },
    body: JSON.stringify({ command: "sleep 0.2", background: true }),
  });
  const body = await response.json();
  assert.ok(body.processId);
  await until(async () => (await client.processes.getProcess(body.processId)).process.status === "completed");
});

await check("background processes never block foreground commands", async () => {
  await client.processes.startProcess("sleep 30", S, { processId: "bg-block" });
  const started = Date.now();
  assert.equal((await client.commands.execute("echo quick", S)).stdout, "quick\n");
  assert.ok(Date.now() - started < 5000);
  await client.processes.killProcess("bg-block");
});

await check("kill takes the whole tree, three levels deep; status killed", async () => {
  await client.processes.startProcess("sh -c 'sh -c \"sleep 201 & sleep 202\" & sleep 203'; sleep 204", S, { processId: "tree" });
  await until(async () => (await client.commands.execute("ps -eo args", undefined)).stdout.includes("sleep 202"));
  await client.processes.killProcess("tree");
  assert.equal((await client.processes.getProcess("tree")).process.status, "killed");
  const ps = (await client.commands.execute("ps -eo args", undefined)).stdout;
  for (const n of [201, 202, 203, 204]) assert.ok(!ps.includes(`sleep ${n}`), ps);
});

await check("killing an unknown process is 404 PROCESS_NOT_FOUND", async () => {
  await rejects(client.processes.killProcess("no-such-process"), "PROCESS_NOT_FOUND", 404);
  await rejects(client.processes.getProcess("no-such-process"), "PROCESS_NOT_FOUND", 404);
});

await check("kill-all", async () => {
  await client.processes.startProcess("sleep 60", S, { processId: "ka-1" });
  await client.processes.startProcess("sleep 60", S, { processId: "ka-2" });
  const killed = await client.processes.killAllProcesses();
  assert.ok(killed.cleanedCount >= 2);
  const list = await client.processes.listProcesses();
  assert.ok(!list.processes.some((p) => p.status === "running"));
});

await check("session delete", async () => {
  const deleted = await client.utils.deleteSession(S);
  assert.equal(deleted.success, true);
});

console.log(`${results.passed} passed, ${results.failed} failed`);
process.exit(results.failed ? 1 : 0);
