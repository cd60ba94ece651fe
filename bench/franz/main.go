// Command franz-bench measures franz-go the way scripts/bench.sh measures every
// client: a fixed number of records produced or consumed, one JSON line out.
//
// It runs at one of two settings:
//   - authors: what franz-go's own examples/bench program sets for throughput
//     (its default linger of 10 ms, 1,000,000-byte batches, a 250 MiB record buffer, three
//     concurrent fetches of at most 5 MiB, idempotent writes);
//   - ours: the settings rust-eda's producer uses (linger 5 ms, 1 MiB batches,
//     acks=all, idempotent writes), so the two clients batch alike.
//
// With -rate the producer paces its records and reports each record's latency,
// from the call to Produce to its acknowledgement.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

var (
	brokers     = flag.String("brokers", "127.0.0.1:9092", "comma-separated seed brokers")
	topic       = flag.String("topic", "", "topic to produce to or read")
	mode        = flag.String("mode", "produce", "produce or consume")
	records     = flag.Int64("records", 1000000, "records to produce or read")
	size        = flag.Int("size", 100, "bytes per record value (produce)")
	compression = flag.String("compression", "none", "none, gzip, snappy, lz4 or zstd (produce)")
	settings    = flag.String("settings", "authors", "authors or ours")
	idempotence = flag.Bool("idempotence", true, "idempotent writes (produce)")
	rate        = flag.Int64("rate", 0, "records per second to pace at; 0 for as fast as it goes (produce)")
)

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "franz-bench: "+format+"\n", args...)
	os.Exit(1)
}

func cpuSeconds() float64 {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return float64(u.Utime.Sec+u.Stime.Sec) + float64(u.Utime.Usec+u.Stime.Usec)/1e6
}

func codec(name string) kgo.CompressionCodec {
	switch strings.ToLower(name) {
	case "none":
		return kgo.NoCompression()
	case "gzip":
		return kgo.GzipCompression()
	case "snappy":
		return kgo.SnappyCompression()
	case "lz4":
		return kgo.Lz4Compression()
	case "zstd":
		return kgo.ZstdCompression()
	}
	die("unknown compression %q", name)
	return kgo.NoCompression()
}

func options() []kgo.Opt {
	opts := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.DefaultProduceTopic(*topic),
		kgo.ProducerBatchCompression(codec(*compression)),
		kgo.RequiredAcks(kgo.AllISRAcks()),
	}
	switch *settings {
	case "authors":
		opts = append(opts,
			kgo.MaxBufferedRecords(250<<20 / *size + 1),
			kgo.ProducerBatchMaxBytes(1000000),
			kgo.MaxConcurrentFetches(3),
			kgo.FetchMaxBytes(5<<20),
		)
	case "ours":
		opts = append(opts,
			kgo.ProducerLinger(5*time.Millisecond),
			kgo.ProducerBatchMaxBytes(1<<20),
			kgo.FetchMaxWait(100*time.Millisecond),
		)
	default:
		die("unknown settings %q", *settings)
	}
	if !*idempotence {
		opts = append(opts, kgo.DisableIdempotentWrite())
	}
	return opts
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)-1))
	return sorted[i]
}

func produce(cl *kgo.Client) map[string]any {
	value := make([]byte, *size)
	for i := range value {
		value[i] = 'x'
	}
	var failed atomic.Value
	var wg sync.WaitGroup
	var latencies []float64
	if *rate > 0 {
		latencies = make([]float64, *records)
	}
	cpu := cpuSeconds()
	started := time.Now()
	for i := int64(0); i < *records; i++ {
		if *rate > 0 {
			// Paced: send what is due by now, then sleep until the next one is.
			due := started.Add(time.Duration(i * int64(time.Second) / *rate))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
		}
		sent := time.Now()
		slot := i
		wg.Add(1)
		cl.Produce(context.Background(), kgo.SliceRecord(value), func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Store(err)
			}
			if latencies != nil {
				latencies[slot] = float64(time.Since(sent).Microseconds()) / 1e3
			}
			wg.Done()
		})
	}
	wg.Wait()
	seconds := time.Since(started).Seconds()
	if err, ok := failed.Load().(error); ok {
		die("produce failed: %v", err)
	}
	out := map[string]any{
		"records":           *records,
		"seconds":           seconds,
		"records_per_s":     float64(*records) / seconds,
		"cpu_s_per_million": (cpuSeconds() - cpu) / float64(*records) * 1e6,
	}
	if latencies != nil {
		// The first second's records are a warm-up, left out for every client
		// alike: they wait for the first connections and metadata.
		if int64(len(latencies)) > *rate {
			latencies = latencies[*rate:]
		}
		sort.Float64s(latencies)
		out["p50_ms"] = percentile(latencies, 50)
		out["p99_ms"] = percentile(latencies, 99)
		out["max_ms"] = latencies[len(latencies)-1]
	}
	return out
}

// firstBatch notes when the first batch of records was read off a fetch
// response: a poll can hand back many fetches at once, so the time the first
// poll returns would hide how long those records took to arrive.
type firstBatch struct {
	once sync.Once
	at   time.Time
}

func (f *firstBatch) OnFetchBatchRead(kgo.BrokerMetadata, string, int32, kgo.FetchBatchMetrics) {
	f.once.Do(func() { f.at = time.Now() })
}

var started = time.Now()

func consume(cl *kgo.Client, hook *firstBatch) map[string]any {
	cpu := cpuSeconds()
	var n int64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for n < *records {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			die("read %d of %d records before the time limit", n, *records)
		}
		fetches.EachError(func(t string, p int32, err error) {
			die("reading %s[%d]: %v", t, p, err)
		})
		n += int64(fetches.NumRecords())
	}
	end := time.Now()
	first := hook.at
	seconds := end.Sub(first).Seconds()
	return map[string]any{
		"records":           n,
		"seconds":           seconds,
		"records_per_s":     float64(n) / seconds,
		"first_record_ms":   float64(first.Sub(started).Microseconds()) / 1e3,
		"cpu_s_per_million": (cpuSeconds() - cpu) / float64(n) * 1e6,
	}
}

func main() {
	flag.Parse()
	if *topic == "" || *size <= 0 || *records <= 0 {
		die("-topic, a positive -size and a positive -records are needed")
	}
	opts := options()
	hook := &firstBatch{}
	if *mode == "consume" {
		opts = append(opts,
			kgo.WithHooks(hook),
			kgo.ConsumeTopics(*topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		)
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		die("client: %v", err)
	}
	defer cl.Close()
	var out map[string]any
	switch *mode {
	case "produce":
		out = produce(cl)
	case "consume":
		out = consume(cl, hook)
	default:
		die("unknown mode %q", *mode)
	}
	out["client"] = "franz-go"
	out["settings"] = *settings
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}
