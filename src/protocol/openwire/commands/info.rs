//! The commands that open, describe and close a connection's resources.

use super::ids::{
    BrokerId, ConnectionId, ConsumerId, Destination, ProducerId, SessionId, TransactionId,
};
use super::DataStructure;

wire_command! {
    /// The broker's introduction after the WireFormatInfo exchange.
    BrokerInfo {
        broker_id: cached BrokerId;
        broker_url: string;
        peer_broker_infos: array BrokerInfo;
        broker_name: string;
        slave_broker: bool;
        master_broker: bool;
        fault_tolerant_configuration: bool;
        duplex_connection: bool;
        network_connection: bool;
        connection_id: long;
        broker_upload_url: string;
        network_properties: string;
    }
}

wire_command! {
    /// A JMS connection: client id and credentials.
    ConnectionInfo {
        connection_id: cached ConnectionId;
        client_id: string;
        password: string;
        user_name: string;
        broker_path: array BrokerId;
        broker_master_connector: bool;
        manageable: bool;
        client_master: bool;
        fault_tolerant: bool;
        failover_reconnect: bool;
        client_ip: string;
    }
}

wire_command! {
    SessionInfo {
        session_id: cached SessionId;
    }
}

wire_command! {
    /// `window_size` > 0 asks for ProducerAcks (producer flow control).
    ProducerInfo {
        producer_id: cached ProducerId;
        destination: cached Destination;
        broker_path: array BrokerId;
        dispatch_async: bool;
        window_size: int;
    }
}

wire_command! {
    /// A subscription: prefetch, selector, durable name, noLocal, exclusive.
    ConsumerInfo {
        consumer_id: cached ConsumerId;
        browser: bool;
        destination: cached Destination;
        prefetch_size: int;
        maximum_pending_message_limit: int;
        dispatch_async: bool;
        selector: string;
        client_id: string, since 10;
        subscription_name: string;
        no_local: bool;
        exclusive: bool;
        retroactive: bool;
        priority: byte;
        broker_path: array BrokerId;
        /// Broker-to-broker only (a NetworkBridgeFilter); a client sends none.
        additional_predicate: nested DataStructure;
        network_subscription: bool;
        optimized_acknowledge: bool;
        no_range_acks: bool;
        network_consumer_path: array ConsumerId;
    }
}

wire_command! {
    /// Closes what `object_id` names: a connection, session, consumer or
    /// producer id.
    RemoveInfo {
        object_id: cached DataStructure;
        last_delivered_sequence_id: long;
    }
}

wire_command! {
    /// Unsubscribes a durable subscription.
    RemoveSubscriptionInfo {
        connection_id: cached ConnectionId;
        subscription_name: string;
        client_id: string;
    }
}

wire_command! {
    /// Begin/prepare/commit/rollback of a local or XA transaction; see
    /// [`TransactionType`](super::TransactionType).
    TransactionInfo {
        connection_id: cached ConnectionId;
        transaction_id: cached TransactionId;
        transaction_type: byte;
    }
}

wire_command! {
    /// Creates (operation 0) or removes (1) a destination; the client uses
    /// it for temporary queues and topics.
    DestinationInfo {
        connection_id: cached ConnectionId;
        destination: cached Destination;
        operation_type: byte;
        timeout: long;
        broker_path: array BrokerId;
    }
}
