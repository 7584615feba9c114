// Starts a real mesh with WebSocket endpoints for a test file (tests/webmesh.py) and stops it.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

function python() {
  if (process.env.IMESH_PYTHON) return process.env.IMESH_PYTHON;
  const venv = join(ROOT, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export async function startMesh() {
  const proc = spawn(python(), [join(ROOT, "tests", "webmesh.py")], {
    cwd: ROOT, stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, PYTHONPATH: process.env.PYTHONPATH || ROOT },
  });
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  const lines = createInterface({ input: proc.stdout });
  const first = await Promise.race([
    new Promise((resolve) => lines.once("line", resolve)),
    exited.then((code) => { throw new Error(`tests/webmesh.py exited with ${code} before the mesh was up`); }),
  ]);
  const info = JSON.parse(first);
  info.stop = async () => {
    proc.stdin.end();
    const timer = setTimeout(() => proc.kill("SIGKILL"), 20000);
    await exited;
    clearTimeout(timer);
  };
  return info;
}

/** Wait until pred() is true (checked every 20 ms) or fail after ms. */
export async function until(pred, ms = 10000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One mesh for a test file: started before its tests, stopped after them together with every
 *  client the tests put in `clients`.  Read the mesh as `shared.mesh` inside tests. */
export function useMesh() {
  const shared = { mesh: null, clients: [] };
  before(async () => { shared.mesh = await startMesh(); });
  after(async () => {
    for (const c of shared.clients) await c.stop({ logout: false }).catch(() => {});
    await shared.mesh?.stop();
  });
  return shared;
}
