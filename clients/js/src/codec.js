// Frames on the wire: one msgpack map, or an array of maps, per WebSocket message / HTTP body.
// uint64 fields (sid, ctime, fragment groups) may exceed 2^53: they decode as BigInt and are
// turned into Numbers only when that is exact, so a value echoed back (sid) is never altered.
import { Decoder, Encoder } from "../vendor/msgpack/index.mjs";

const encoder = new Encoder({ useBigInt64: true, ignoreUndefined: true });
const decoder = new Decoder({ useBigInt64: true });

function narrow(value) {
  if (typeof value === "bigint") {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
      ? Number(value) : value;
  }
  if (Array.isArray(value)) return value.map(narrow);
  if (value && typeof value === "object" && !(value instanceof Uint8Array)) {
    for (const key of Object.keys(value)) value[key] = narrow(value[key]);
  }
  return value;
}

// with useBigInt64 the encoder writes Numbers beyond 32 bits as float64, which the server
// refuses for integer fields: such integers go out as BigInt (msgpack uint64/int64)
function widen(value) {
  if (typeof value === "number") {
    return Number.isInteger(value) && (value > 0xffffffff || value < -0x80000000) ? BigInt(value) : value;
  }
  if (Array.isArray(value)) return value.map(widen);
  if (value && typeof value === "object" && !(value instanceof Uint8Array)) {
    const out = {};
    for (const key of Object.keys(value)) out[key] = widen(value[key]);
    return out;
  }
  return value;
}

export function encodeFrame(msg) {
  return encoder.encode(widen(msg));
}

/** The maps of one frame (a map or an array of maps); throws on anything else. */
export function decodeFrame(bytes) {
  const value = narrow(decoder.decode(bytes));
  const maps = Array.isArray(value) ? value : [value];
  for (const m of maps) {
    if (!m || typeof m !== "object" || Array.isArray(m)) throw new Error("frame is not a map or an array of maps");
  }
  return maps;
}
