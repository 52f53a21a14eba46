"""mmbeam: multimodal dataflow on Apache Beam."""
