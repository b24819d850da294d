// Command fleetgen is a fleet of simulated training jobs against runstream's ingest, compiled so that a fleet bench
// measures the stack, not its load generator: 2,000 jobs cost about a fifth of a core (a third of the Python jobs').
//
// Each job is what one training process is to ingest: its own gRPC connection, its own run, the token in its
// metadata, -steps steps of -metrics metrics logged every -flush-s whatever its sends wait on, and every -flush-s
// (with jitter, and no sooner than ingest's flow-control hint in the last ack) one metrics batch of the steps
// logged since the last, sent as one message of the SDK's Session stream (-protocol session)
// or as one SendStream call (-protocol call). A failed send is retried after a doubling backoff, as the SDK does.
// bench/fleet.py builds and runs it, and reads the one JSON object it prints at the end. The token comes from the
// environment (RUNSTREAM_TOKEN), so it is not on the command line.
//
// The messages come from proto/runstream/v1/ingest.proto, generated into pb/ by bench/fleet.py before it builds this.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"runstream.dev/bench/fleetgen/pb"
)

const ackTimeout = 30 * time.Second

var (
	sessionDesc = &grpc.StreamDesc{StreamName: "Session", ServerStreams: true, ClientStreams: true}
	sendDesc    = &grpc.StreamDesc{StreamName: "SendStream", ClientStreams: true}
)

type options struct {
	addr, token, project, protocol string
	jobs, steps, metrics           int
	flush                          time.Duration
	start, stop                    time.Time
}

// result is what the jobs did, in the keys bench/fleet.py reads.
type result struct {
	Offered      int64          `json:"offered"`
	Acked        int64          `json:"acked"`
	Latency      []float64      `json:"latency"`
	ErrorDetails map[string]int `json:"error_details"`
	Intervals    []float64      `json:"intervals"`
	CPUSeconds   float64        `json:"cpu_s"`
}

func (r *result) add(o *result) {
	r.Offered += o.Offered
	r.Acked += o.Acked
	r.Latency = append(r.Latency, o.Latency...)
	r.Intervals = append(r.Intervals, o.Intervals...)
	for k, v := range o.ErrorDetails {
		r.ErrorDetails[k] += v
	}
}

// sender sends one batch and waits for ingest to acknowledge it; hint is ingest's flow-control interval.
type sender interface {
	send(b *pb.Batch) (hint time.Duration, err error)
	close()
}

// session is the SDK's persistent stream: one SessionRequest per flush, its SessionAck in order.
type session struct {
	stream grpc.ClientStream
	cancel context.CancelFunc
	id     uint64
}

func openSession(ctx context.Context, conn *grpc.ClientConn) (*session, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := conn.NewStream(ctx, sessionDesc, "/runstream.v1.Ingest/Session")
	if err != nil {
		cancel()
		return nil, err
	}
	return &session{stream: stream, cancel: cancel}, nil
}

func (s *session) send(b *pb.Batch) (time.Duration, error) {
	s.id++
	if err := s.stream.SendMsg(&pb.SessionRequest{Id: s.id, Batches: []*pb.Batch{b}}); err != nil {
		return 0, s.stream.RecvMsg(&pb.SessionAck{}) // the stream's own error says why
	}
	timer := time.AfterFunc(ackTimeout, s.cancel)
	defer timer.Stop()
	ack := &pb.SessionAck{}
	if err := s.stream.RecvMsg(ack); err != nil {
		return 0, err
	}
	if ack.Id != s.id {
		return 0, fmt.Errorf("session ended: ack %d for request %d", ack.Id, s.id)
	}
	return time.Duration(ack.MinFlushIntervalMs) * time.Millisecond, nil
}

func (s *session) close() {
	_ = s.stream.CloseSend()
	s.cancel()
}

// call is one SendStream call per flush.
type call struct {
	ctx  context.Context
	conn *grpc.ClientConn
}

func (c call) send(b *pb.Batch) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(c.ctx, ackTimeout)
	defer cancel()
	stream, err := c.conn.NewStream(ctx, sendDesc, "/runstream.v1.Ingest/SendStream")
	if err != nil {
		return 0, err
	}
	if err := stream.SendMsg(&pb.SendRequest{Batches: []*pb.Batch{b}}); err != nil {
		return 0, stream.RecvMsg(&pb.SendResponse{})
	}
	if err := stream.CloseSend(); err != nil {
		return 0, err
	}
	return 0, stream.RecvMsg(&pb.SendResponse{})
}

func (call) close() {}

// codeNames are gRPC's canonical status names, as the Python jobs report them.
var codeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// errorDetail names an error as bench/fleet.py's Python jobs do: "CODE: message".
func errorDetail(err error) string {
	text := "RuntimeError: " + err.Error()
	if st, ok := status.FromError(err); ok {
		name := st.Code().String()
		if int(st.Code()) < len(codeNames) {
			name = codeNames[st.Code()]
		}
		text = name + ": " + st.Message()
	}
	if len(text) > 200 {
		text = text[:200]
	}
	return text
}

func randomHex(n int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = digits[rand.IntN(16)]
	}
	return string(b)
}

func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

func job(o options) *result {
	out := &result{ErrorDetails: map[string]int{}}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		out.ErrorDetails[errorDetail(err)]++
		return out
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+o.token)
	runID := randomHex(32)
	names := make([]string, o.metrics)
	for i := range names {
		names[i] = fmt.Sprintf("m%d", i)
	}
	var snd sender
	defer func() {
		if snd != nil {
			snd.close()
		}
	}()
	var seq uint64
	var step int64
	hint := time.Duration(0)
	began := o.start.Add(time.Duration(rand.Float64() * float64(o.flush))) // jobs do not start in lockstep
	sleepUntil(began)
	stepsPerS := float64(o.steps) / o.flush.Seconds()
	stepAt := func(s int64) time.Time {
		return began.Add(time.Duration(float64(s) / stepsPerS * float64(time.Second)))
	}
	for time.Now().Before(o.stop) {
		interval := max(o.flush, hint)
		wait := min(time.Duration(float64(interval)*(0.8+0.4*rand.Float64())), max(50*time.Millisecond, time.Until(o.stop)))
		time.Sleep(wait)
		out.Intervals = append(out.Intervals, interval.Seconds())
		// The job logs at its pace whatever its sends wait on (the SDK sends from a thread of its own): the batch
		// holds every step due by now, each point stamped with its step's time.
		due := int64(time.Since(began).Seconds() * stepsPerS)
		if due <= step {
			continue
		}
		seq++
		n := int(due-step) * o.metrics
		m := &pb.Metrics{Names: names, NameIndex: make([]uint32, n), Steps: make([]int64, n),
			TimestampsMs: make([]int64, n), Values: make([]float64, n)}
		for i := range n {
			s := step + int64(i/o.metrics)
			m.NameIndex[i] = uint32(i % o.metrics)
			m.Steps[i] = s
			m.TimestampsMs[i] = stepAt(s).UnixMilli()
			m.Values[i] = rand.Float64()
		}
		b := &pb.Batch{BatchId: randomHex(32), Project: o.project, RunId: runID, Seq: seq,
			CreatedMs: stepAt(step).UnixMilli(), Body: &pb.Batch_Metrics{Metrics: m}}
		step = due
		out.Offered += int64(n)
		backoff := 100 * time.Millisecond
		for {
			t0 := time.Now()
			if snd == nil {
				if o.protocol == "call" {
					snd = call{ctx: ctx, conn: conn}
				} else if snd, err = openSession(ctx, conn); err != nil {
					snd = nil
				}
			}
			if snd != nil {
				hint, err = snd.send(b)
			}
			if err == nil {
				out.Latency = append(out.Latency, float64(time.Since(t0).Microseconds())/1000)
				out.Acked += int64(n)
				break
			}
			out.ErrorDetails[errorDetail(err)]++
			if snd != nil {
				snd.close()
				snd = nil
			}
			time.Sleep(time.Duration(float64(backoff) * (0.5 + rand.Float64())))
			backoff = min(5*time.Second, backoff*2)
		}
	}
	return out
}

func unixTime(s float64) time.Time {
	return time.Unix(0, int64(s*1e9))
}

func main() {
	var o options
	var flush, start, stop float64
	flag.StringVar(&o.addr, "addr", "127.0.0.1:50051", "ingest's gRPC address")
	flag.StringVar(&o.project, "project", "fleet", "the runs' project")
	flag.StringVar(&o.protocol, "protocol", "session", "session (one Session stream per job) or call (one SendStream call per flush)")
	flag.IntVar(&o.jobs, "jobs", 2000, "simulated jobs")
	flag.IntVar(&o.steps, "steps", 5, "steps per flush interval")
	flag.IntVar(&o.metrics, "metrics", 10, "metrics per step")
	flag.Float64Var(&flush, "flush-s", 0.5, "flush interval, seconds")
	flag.Float64Var(&start, "start", 0, "when the jobs start, Unix seconds (0: now)")
	flag.Float64Var(&stop, "stop", 0, "when the jobs stop logging, Unix seconds")
	profile := flag.String("cpuprofile", "", "write this process's CPU profile here (go tool pprof)")
	flag.Parse()
	o.token = os.Getenv("RUNSTREAM_TOKEN")
	o.flush = time.Duration(flush * float64(time.Second))
	o.start = time.Now()
	if start > 0 {
		o.start = unixTime(start)
	}
	o.stop = unixTime(stop)
	if o.protocol != "session" && o.protocol != "call" {
		fmt.Fprintln(os.Stderr, "fleetgen: -protocol is session or call")
		os.Exit(2)
	}
	if !o.stop.After(o.start) || o.jobs < 1 || o.flush <= 0 || o.steps < 1 || o.metrics < 1 {
		fmt.Fprintln(os.Stderr, "fleetgen: needs -stop after -start, and -jobs, -flush-s, -steps, -metrics above 0")
		os.Exit(2)
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "fleetgen: -cpuprofile:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	total := &result{ErrorDetails: map[string]int{}, Latency: []float64{}, Intervals: []float64{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range o.jobs {
		wg.Go(func() {
			r := job(o)
			mu.Lock()
			total.add(r)
			mu.Unlock()
		})
	}
	wg.Wait()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		total.CPUSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	if err := json.NewEncoder(os.Stdout).Encode(total); err != nil {
		fmt.Fprintln(os.Stderr, "fleetgen:", err)
		os.Exit(1)
	}
}
