// Submission latency at a fixed rate (scripts/bench.sh): autocannon paces
// RATE requests/s over CONNECTIONS connections for DURATION seconds, each a
// POST /v1/generations as a random user of TOKENS_FILE. Prints one line:
// "rate=<achieved/s> p50=<ms> p90=<ms> p99=<ms> max=<ms> non2xx=<n> errors=<n>".
// Latency is from each request's send: autocannon doesn't correct for
// coordinated omission, so the figure is only fair while the server keeps
// up with the rate (the line's achieved rate says whether it did).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.AUTOCANNON_DIR + "/");
const autocannon = require("autocannon");

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const tokens = readFileSync(need("TOKENS_FILE"), "utf8").split("\n").filter(Boolean);
let n = 0;

const result = await autocannon({
  url: need("URL"),
  connections: Number(need("CONNECTIONS")),
  overallRate: Number(need("RATE")),
  duration: Number(need("DURATION")),
  requests: [
    {
      method: "POST",
      path: "/v1/generations",
      setupRequest: (req) => {
        n += 1;
        const token = tokens[Math.floor(Math.random() * tokens.length)];
        return {
          ...req,
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ prompt: `rate ${n} ${Math.floor(Math.random() * 1e9)}` }),
        };
      },
    },
  ],
});
const l = result.latency;
const rate = result.requests.total / result.duration;
console.log(
  `rate=${rate.toFixed(0)} p50=${l.p50} p90=${l.p90} p99=${l.p99} max=${l.max} ` +
    `non2xx=${result.non2xx} errors=${result.errors + result.timeouts}`,
);
