// Command chclient runs queries through clickhouse-go v2 over HTTP, configured the way Grafana's ClickHouse
// plugin configures it (database/sql, HTTP protocol, gzip, max_execution_time, username and password), and prints
// each query's columns, database types and rows as JSON. The runstream tests compare its answers with
// clickhouse-connect's.
//
// Usage: chclient -addr 127.0.0.1:8124 -password TOKEN [-database runstream] [-compression gzip|lz4|zstd|none] < queries.json
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"reflect"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

type answer struct {
	Columns []string `json:"columns"`
	Types   []string `json:"types"`
	Rows    [][]any  `json:"rows"`
	Error   string   `json:"error,omitempty"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8124", "host:port of the HTTP endpoint")
	user := flag.String("user", "grafana", "username")
	password := flag.String("password", "", "password (a runstream token)")
	database := flag.String("database", "runstream", "default database")
	compression := flag.String("compression", "gzip", "gzip (the plugin's choice over HTTP), lz4, zstd, br or none")
	timeout := flag.Int("timeout", 60, "query timeout in seconds (clickhouse-go sends it as max_execution_time)")
	flag.Parse()

	methods := map[string]clickhouse.CompressionMethod{"gzip": clickhouse.CompressionGZIP, "lz4": clickhouse.CompressionLZ4,
		"zstd": clickhouse.CompressionZSTD, "br": clickhouse.CompressionBrotli, "none": clickhouse.CompressionNone}
	method, ok := methods[*compression]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown compression %q\n", *compression)
		os.Exit(2)
	}
	var queries []string
	if err := json.NewDecoder(os.Stdin).Decode(&queries); err != nil {
		fmt.Fprintf(os.Stderr, "reading queries: %v\n", err)
		os.Exit(2)
	}
	db := clickhouse.OpenDB(&clickhouse.Options{
		Addr:        []string{*addr},
		Auth:        clickhouse.Auth{Database: *database, Username: *user, Password: *password},
		Protocol:    clickhouse.HTTP,
		Compression: &clickhouse.Compression{Method: method},
		Settings:    clickhouse.Settings{"max_execution_time": *timeout},
		DialTimeout: 10 * time.Second,
		ReadTimeout: time.Duration(*timeout) * time.Second,
	})
	defer db.Close()
	out := make([]answer, 0, len(queries))
	for _, q := range queries {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeout)*time.Second)
		out = append(out, run(ctx, db, q))
		cancel()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "writing answers: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, db *sql.DB, q string) answer {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return answer{Error: err.Error()}
	}
	defer rows.Close()
	cols, err := rows.ColumnTypes()
	if err != nil {
		return answer{Error: err.Error()}
	}
	a := answer{Rows: [][]any{}}
	for _, c := range cols {
		a.Columns = append(a.Columns, c.Name())
		a.Types = append(a.Types, c.DatabaseTypeName())
	}
	for rows.Next() {
		dest := make([]any, len(cols))
		for i, c := range cols {
			dest[i] = reflect.New(c.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return answer{Error: err.Error()}
		}
		row := make([]any, len(cols))
		for i, d := range dest {
			row[i] = plain(reflect.ValueOf(d).Elem().Interface())
		}
		a.Rows = append(a.Rows, row)
	}
	if err := rows.Err(); err != nil {
		return answer{Error: err.Error()}
	}
	return a
}

// plain makes a scanned value JSON-safe: times as RFC 3339 in UTC, non-finite floats as strings, pointers followed.
func plain(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Sprint(x)
		}
		return x
	case float32:
		return plain(float64(x))
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer:
		if rv.IsNil() {
			return nil
		}
		return plain(rv.Elem().Interface())
	case reflect.Slice, reflect.Array:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return fmt.Sprintf("%s", v)
		}
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = plain(rv.Index(i).Interface())
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range rv.MapKeys() {
			out[fmt.Sprint(k.Interface())] = plain(rv.MapIndex(k).Interface())
		}
		return out
	}
	return v
}
