//! Responses, keep-alives and the broker's control messages.

use super::ids::{ConnectionId, ConsumerId, Destination};
use super::DataStructure;

wire_command! {
    /// Answers the command whose `command_id` is `correlation_id`.
    Response {
        correlation_id: int;
    }
}

wire_command! {
    /// A failed command: the client throws `exception` from the call that
    /// sent it.
    ExceptionResponse {
        correlation_id: int;
        exception: throwable;
    }
}

wire_command! {
    /// A Response carrying a structure (ActiveMQ answers some requests so).
    DataResponse {
        correlation_id: int;
        data: nested DataStructure;
    }
}

wire_command! {
    IntegerResponse {
        correlation_id: int;
        result: int;
    }
}

wire_command! {
    /// The inactivity monitor's heartbeat; each side echoes the other's
    /// when `response_required` is set.
    KeepAliveInfo {}
}

wire_command! {
    /// The client is closing the connection cleanly.
    ShutdownInfo {}
}

wire_command! {
    FlushCommand {}
}

wire_command! {
    /// A named command string (ActiveMQ uses it for broker admin hooks).
    ControlCommand {
        command: string;
    }
}

wire_command! {
    /// Broker to client: close, suspend or reconnect elsewhere (the
    /// failover transport follows `reconnect_to`).
    ConnectionControl {
        close: bool;
        exit: bool;
        fault_tolerant: bool;
        resume: bool;
        suspend: bool;
        connected_brokers: string;
        reconnect_to: string;
        rebalance_connection: bool;
        token: bytes;
    }
}

wire_command! {
    /// Broker to client about one consumer: close it, change its prefetch,
    /// start or stop it.
    ConsumerControl {
        destination: nested Destination;
        close: bool;
        consumer_id: nested ConsumerId;
        prefetch: int;
        flush: bool;
        start: bool;
        stop: bool;
    }
}

wire_command! {
    /// An asynchronous error on the connection (no command to answer).
    ConnectionError {
        exception: throwable;
        connection_id: nested ConnectionId;
    }
}
