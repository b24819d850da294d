// Runs queries through @clickhouse/client (the official Node.js client) and prints the rows as JSON.
// Input on stdin: {"url", "username", "password", "database", "queries": [{"query", "query_params"?, "format"?}]}.
import { createClient } from '@clickhouse/client'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const job = JSON.parse(Buffer.concat(chunks).toString())
const client = createClient({
  url: job.url,
  username: job.username,
  password: job.password,
  database: job.database,
  compression: { response: true, request: true },
  clickhouse_settings: { max_execution_time: 30 },
})
const answers = []
for (const q of job.queries) {
  try {
    const rs = await client.query({ query: q.query, format: q.format ?? 'JSONEachRow', query_params: q.query_params ?? {} })
    answers.push({ rows: await rs.json(), query_id: rs.query_id })
  } catch (err) {
    answers.push({ error: String(err.message ?? err), code: err.code ?? null })
  }
}
await client.close()
process.stdout.write(JSON.stringify(answers))
