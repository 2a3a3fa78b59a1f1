//! Launch plans: which program starts the runtime client for a Lambda
//! runtime identifier (to be filled in by the runtime-core work).
