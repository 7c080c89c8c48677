package org.tensorflow.lite;

import java.nio.ByteBuffer;

/**
 * COMPILE-ONLY declaration of the LiteRT members the demo calls, so the app compiles here without Google's Maven.
 * Never packaged: the app gets the real class from com.google.ai.edge.litert:litert (same package and signatures).
 */
public final class Interpreter implements AutoCloseable {
    public Interpreter(ByteBuffer byteBuffer, Options options) {
        throw new UnsupportedOperationException("compile-only declaration");
    }

    public void run(Object input, Object output) {
        throw new UnsupportedOperationException("compile-only declaration");
    }

    @Override
    public void close() {
        throw new UnsupportedOperationException("compile-only declaration");
    }

    public static class Options {
        public Options setNumThreads(int numThreads) {
            throw new UnsupportedOperationException("compile-only declaration");
        }

        public Options setUseXNNPACK(boolean useXNNPACK) {
            throw new UnsupportedOperationException("compile-only declaration");
        }
    }
}
