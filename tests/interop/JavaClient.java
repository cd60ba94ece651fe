// Apache Kafka's Java client as the other client in tests/interop.rs, run as a
// single source file from the jars scripts/broker.sh fetched:
//
//   java -cp "<libs>/*" tests/interop/JavaClient.java produce BROKERS TOPIC CODEC COUNT
//       COUNT records keyed key-0.. (value value-i), the default partitioner
//       (murmur2), compressed with CODEC
//   ... transactions BROKERS TOPIC CODEC COUNT
//       a transaction of COUNT records "aborted-i" that is aborted, then one of
//       COUNT records "committed-i" that is committed
//   ... send BROKERS TOPIC CODEC KEY VALUE
//       one record, default partitioner, compressed with CODEC
//   ... consume BROKERS TOPIC COUNT [ISOLATION]
//       reads COUNT records from the start in a group of its own and prints one
//       JSON line per record: partition, offset, key, value; ISOLATION is
//       read_uncommitted (the Java client's default) or read_committed
//
// Exits non-zero with a message on any error.

import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class JavaClient {
    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: produce|transactions BROKERS TOPIC CODEC COUNT | consume BROKERS TOPIC COUNT [ISOLATION]");
            System.exit(2);
        }
        String brokers = args[1], topic = args[2];
        switch (args[0]) {
            case "produce" -> produce(brokers, topic, args[3], Integer.parseInt(args[4]), null);
            case "transactions" -> produce(brokers, topic, args[3], Integer.parseInt(args[4]),
                    "interop-" + UUID.randomUUID());
            case "send" -> send(brokers, topic, args[3], args[4], args[5]);
            case "consume" -> consume(brokers, topic, Integer.parseInt(args[3]),
                    args.length > 4 ? args[4] : "read_uncommitted");
            default -> {
                System.err.println("unknown command " + args[0]);
                System.exit(2);
            }
        }
    }

    static void produce(String brokers, String topic, String codec, int count, String transactionalId)
            throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        p.put("compression.type", codec);
        p.put("linger.ms", "5");
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        if (transactionalId != null) {
            p.put("transactional.id", transactionalId);
        }
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            if (transactionalId == null) {
                for (int i = 0; i < count; i++) {
                    ProducerRecord<String, String> r = new ProducerRecord<>(topic, "key-" + i, "value-" + i);
                    r.headers().add("origin", "java".getBytes());
                    producer.send(r).get();
                }
                return;
            }
            producer.initTransactions();
            for (String outcome : List.of("aborted", "committed")) {
                producer.beginTransaction();
                for (int i = 0; i < count; i++) {
                    producer.send(new ProducerRecord<>(topic, "key-" + i, outcome + "-" + i));
                }
                producer.flush();
                if (outcome.equals("aborted")) {
                    producer.abortTransaction();
                } else {
                    producer.commitTransaction();
                }
            }
        }
    }

    static void send(String brokers, String topic, String codec, String key, String value)
            throws Exception {
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        p.put("compression.type", codec);
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            producer.send(new ProducerRecord<>(topic, key, value)).get();
        }
    }

    static void consume(String brokers, String topic, int count, String isolation) {
        Properties p = new Properties();
        p.put("isolation.level", isolation);
        p.put("bootstrap.servers", brokers);
        p.put("group.id", "interop-" + UUID.randomUUID());
        p.put("auto.offset.reset", "earliest");
        p.put("enable.auto.commit", "false");
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        int seen = 0;
        long deadline = System.currentTimeMillis() + 60_000;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            consumer.subscribe(List.of(topic));
            while (seen < count) {
                if (System.currentTimeMillis() > deadline) {
                    System.err.println("only " + seen + " of " + count + " records within 60 s");
                    System.exit(1);
                }
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofSeconds(1))) {
                    seen++;
                    System.out.println("{\"partition\":" + r.partition() + ",\"offset\":" + r.offset()
                            + ",\"key\":" + quote(r.key()) + ",\"value\":" + quote(r.value()) + "}");
                }
            }
        }
        System.out.flush();
    }

    static String quote(String s) {
        if (s == null) {
            return "null";
        }
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }
}
